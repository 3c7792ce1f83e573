//! Errors of the VMDK reader.
//!
//! Policy (after rustic_core's `error.rs`): every error names the file it is about and says
//! what is wrong in one line, with offsets where they help. Each error has a coarse
//! [`ErrorKind`] that the binary maps to an exit code; callers never parse messages.

use std::io;
use std::path::{Path, PathBuf};

/// What kind of failure an [`Error`] is; binaries map this to an exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input is corrupt or inconsistent.
    Corrupt,
    /// A file does not exist.
    NotFound,
    /// A valid input this library does not handle.
    Unsupported,
    /// An operating-system I/O failure.
    Io,
    /// The path policy forbids following a path named by the input.
    Refused,
    /// The caller asked for something outside the disk (a read past the end).
    OutOfRange,
}

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },

    /// A file named by another (an extent or a parent link) could not be opened.
    #[error("{}: {role} {}: {source}", from.display(), path.display())]
    Named {
        from: PathBuf,
        role: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error("{}: {what}", path.display())]
    Corrupt { path: PathBuf, what: String },

    #[error("{}: unsupported: {what}", path.display())]
    Unsupported { path: PathBuf, what: String },

    #[error("{}: refused: {what}", path.display())]
    Refused { path: PathBuf, what: String },

    #[error("{}: {what} (parent {})", child.display(), parent.display())]
    Chain {
        child: PathBuf,
        parent: PathBuf,
        what: String,
    },

    #[error(
        "read of {len} bytes at offset {offset} passes the end of the disk ({capacity} bytes)"
    )]
    OutOfRange {
        offset: u64,
        len: u64,
        capacity: u64,
    },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            Error::Io { .. } => ErrorKind::Io,
            Error::Named { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            Error::Named { .. } => ErrorKind::Io,
            Error::Corrupt { .. } | Error::Chain { .. } => ErrorKind::Corrupt,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::Refused { .. } => ErrorKind::Refused,
            Error::OutOfRange { .. } => ErrorKind::OutOfRange,
        }
    }

    pub(crate) fn io(path: &Path, source: io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Say which file named the one an I/O error is about (`role` is "extent" or "parent").
    pub(crate) fn named_by(self, from: &Path, role: &'static str) -> Error {
        match self {
            Error::Io { path, source } => Error::Named {
                from: from.to_path_buf(),
                role,
                path,
                source,
            },
            e => e,
        }
    }

    pub(crate) fn corrupt(path: &Path, what: impl Into<String>) -> Error {
        Error::Corrupt {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }

    pub(crate) fn unsupported(path: &Path, what: impl Into<String>) -> Error {
        Error::Unsupported {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }

    pub(crate) fn refused(path: &Path, what: impl Into<String>) -> Error {
        Error::Refused {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
