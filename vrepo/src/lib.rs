//! # vrepo
//!
//! The VML repository: a working area's VMware VM saved as an *entry* (full, incremental or
//! differential), and any entry built back into a working area, byte for byte.
//!
//! - [`repo`]: the repository folder, entry names, tags, working-area records, publishing.
//! - [`manifest`]: `entry.json`, the description of an entry (schema `vrepo.entry/1`).
//! - [`workarea`]: what a working area holds (one VM, via vmx-parse's inventory).
//! - [`volume`]: an entry's files laid end to end as one image, the unit vdiff and vpatch see.
//! - [`store`]: the stored files of an entry (delta, block digests, chunk digests).
//! - [`vms`]: the VMs of a repository, entry selectors, choosing a clone's base.
//! - [`save`], [`build`], [`query`]: the commands.
//!
//! The on-disk layout is specified in `docs/vrepo.md`. The library never prints or exits; the
//! `vrepo` binary is a thin layer over it.

pub mod build;
pub mod copy;
pub mod error;
pub mod lock;
pub mod manifest;
pub mod mount;
pub mod owner;
pub mod query;
pub mod repo;
pub mod rewrite;
pub mod save;
pub mod storage;
pub mod store;
pub mod verify;
pub mod vms;
pub mod volume;
pub mod workarea;

pub use error::{Error, ErrorKind, Result};
pub use manifest::{Entry, Mode};
pub use repo::Repo;
