//! seSparse extents. PLACEHOLDER: being implemented.

use crate::error::{Error, Result};
use crate::extent::{ExtentMap, FileId, PieceSink};
use crate::io::DiskFile;

pub const MAGIC: u64 = 0xCAFE_BABE;

#[derive(Debug)]
pub struct SeSparseExtent {
    pub file: FileId,
    capacity_bytes: u64,
}

impl SeSparseExtent {
    pub fn open(files: &[DiskFile], file: FileId) -> Result<SeSparseExtent> {
        Err(Error::unsupported(&files[file as usize].path, "seSparse not yet implemented"))
    }
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }
}

impl ExtentMap for SeSparseExtent {
    fn resolve(&self, _: &[DiskFile], _: u64, _: u64, _: bool, _: &mut PieceSink) -> Result<()> {
        unimplemented!()
    }
}
