//! # vmdk-parse
//!
//! Reads every VMDK variant a VMware site has, VMware snapshot chains, and raw images, as the
//! guest sees them. The rest of the VML toolkit (vdiff, vpatch, vrepo) reads disks through it.
//!
//! ```no_run
//! let disk = vmdk_parse::Disk::open("vm/disk-000002.vmdk")?;
//! let mut sector = [0u8; 512];
//! disk.read_at(&mut sector, 0)?;
//! for range in disk.map() {
//!     let r = range?;
//!     println!("{} +{} {:?} link {}", r.offset, r.length, r.state, r.depth);
//! }
//! # Ok::<(), vmdk_parse::Error>(())
//! ```
//!
//! ## Design
//! - A [`Disk`] is a chain of [`Link`]s: the opened file is link 0, its parent link 1, down to
//!   the base. Each link is a list of [`Extent`]s laid end to end.
//! - Every extent kind (flat, zero, hosted sparse and streamOptimized, COWD, seSparse) answers
//!   one question, [`extent::ExtentMap::resolve`]: where each byte of a range is. Reading
//!   ([`Disk::read_at`]), the allocation map ([`Disk::map`]), `cat` and `check` are built on it.
//! - Nothing is sized by an unchecked field: tables are bounded by the file that holds them,
//!   grain tables are read lazily and cached, and the map is produced window by window.
//! - [`write`] writes disks (monolithicSparse, streamOptimized, monolithicFlat and the
//!   twoGbMaxExtent formats) through a sequential API, with temporary files renamed into place
//!   only when the whole disk is written.
//! - The library never prints and never exits; errors are typed ([`Error`], [`ErrorKind`]).
//!
//! The formats, the decisions where readers disagree, and the path policy are documented in
//! `docs/vmdk-parse.md`.

pub mod cat;
pub mod check;
pub mod cowd;
pub mod descriptor;
pub mod disk;
pub mod error;
pub mod extent;
pub mod info;
pub mod io;
pub mod map;
pub mod sesparse;
pub mod sparse;
pub mod write;

pub use descriptor::Descriptor;
pub use disk::{Disk, Extent, ExtentData, Link, LinkFormat, OpenOptions, Piece};
pub use error::{Error, ErrorKind, Result};
pub use io::{FileSource, ReadAt};
pub use map::{MapRange, State, Totals};
