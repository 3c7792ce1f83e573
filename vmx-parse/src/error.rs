//! Errors of the VMX reader.
//!
//! Policy, as in vmdk-parse: every error names the file it is about and says what is wrong in
//! one line. Each error has a coarse [`ErrorKind`] that the binary maps to an exit code; callers
//! never parse messages. Oddities a reader can live with are not errors: a line without `=` is
//! kept raw, a value without its closing quote is read to the end of its line (both reported as
//! [`crate::Warning`]s), and a line with bytes invalid in the file's encoding keeps its bytes,
//! is read with U+FFFD, and is reported as a [`crate::Problem`].

use std::io;
use std::path::{Path, PathBuf};

/// What kind of failure an [`Error`] is; binaries map this to an exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input is not a readable dictionary file (binary data, too large, too many lines).
    Corrupt,
    /// A file does not exist.
    NotFound,
    /// A valid input this library does not handle (an encoding that is not ASCII-compatible).
    Unsupported,
    /// An operating-system I/O failure.
    Io,
    /// The path policy forbids following a path named by the input.
    Refused,
    /// The caller asked for something that cannot be done (a key with spaces, a value the
    /// file's encoding cannot represent).
    BadRequest,
}

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },

    #[error("{}: {what}", path.display())]
    Corrupt { path: PathBuf, what: String },

    #[error("{}: unsupported: {what}", path.display())]
    Unsupported { path: PathBuf, what: String },

    #[error("{}: refused: {what}", path.display())]
    Refused { path: PathBuf, what: String },

    #[error("{what}")]
    BadRequest { what: String },

    /// A disk chain could not be followed (from vmdk-parse).
    #[error(transparent)]
    Disk(#[from] vmdk_parse::Error),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            Error::Io { .. } => ErrorKind::Io,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::Refused { .. } => ErrorKind::Refused,
            Error::BadRequest { .. } => ErrorKind::BadRequest,
            Error::Disk(e) => match e.kind() {
                vmdk_parse::ErrorKind::Corrupt => ErrorKind::Corrupt,
                vmdk_parse::ErrorKind::NotFound => ErrorKind::NotFound,
                vmdk_parse::ErrorKind::Unsupported => ErrorKind::Unsupported,
                vmdk_parse::ErrorKind::Io => ErrorKind::Io,
                vmdk_parse::ErrorKind::Refused => ErrorKind::Refused,
                vmdk_parse::ErrorKind::OutOfRange => ErrorKind::Corrupt,
            },
        }
    }

    pub(crate) fn io(path: &Path, source: io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
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

    pub(crate) fn bad_request(what: impl Into<String>) -> Error {
        Error::BadRequest { what: what.into() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
