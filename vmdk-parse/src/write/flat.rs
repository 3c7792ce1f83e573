//! FLAT extents (monolithicFlat `-flat.vmdk`, twoGbMaxExtentFlat `-f00N.vmdk`): the guest bytes
//! as they are, in a sparse host file. Zero and unallocated ranges, and 4 KiB blocks of data
//! that are all zeros, stay holes (a flat extent cannot tell zero from unallocated; holes read as
//! zeros). Aligned data goes with `O_DIRECT` where the file system takes it, as `cat -o` does.

use super::grains::Range;
use super::{out_err, WriteError};
use crate::cat::{open_direct, write_nonzero, SparseOut};
use std::fs::File;
use std::path::PathBuf;

pub(crate) struct FlatExtent {
    file: File,
    direct: Option<File>,
    path: PathBuf,
    pos: u64,
}

impl FlatExtent {
    pub(crate) fn new(file: File, path: PathBuf, size: u64) -> Result<FlatExtent, WriteError> {
        file.set_len(size).map_err(out_err(&path))?;
        Ok(FlatExtent {
            direct: open_direct(&path),
            file,
            path,
            pos: 0,
        })
    }

    pub(crate) fn push(&mut self, range: Range<'_>) -> Result<(), WriteError> {
        if let Range::Data(d) = range {
            let mut out = SparseOut {
                file: &self.file,
                direct: self.direct.take(),
            };
            let res = write_nonzero(&mut out, d, self.pos);
            self.direct = out.direct;
            res.map_err(out_err(&self.path))?;
        }
        self.pos += range.len();
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<(), WriteError> {
        Ok(())
    }
}
