//! COWD (vmfsSparse) extents. PLACEHOLDER: being implemented.

use crate::error::{Error, Result};
use crate::extent::{ExtentMap, FileId, PieceSink};
use crate::io::DiskFile;

pub const MAGIC: &[u8; 4] = b"COWD";

#[derive(Debug)]
pub struct CowdExtent {
    pub file: FileId,
    capacity_bytes: u64,
}

impl CowdExtent {
    pub fn open(files: &[DiskFile], file: FileId) -> Result<CowdExtent> {
        Err(Error::unsupported(&files[file as usize].path, "COWD not yet implemented"))
    }
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }
}

impl ExtentMap for CowdExtent {
    fn resolve(&self, _: &[DiskFile], _: u64, _: u64, _: bool, _: &mut PieceSink) -> Result<()> {
        unimplemented!()
    }
}
