//! The errors of the repository library, each with the class the binary turns into an exit code
//! (`docs/exit-codes.md`).

use std::io;
use std::path::Path;

/// The class of an error: which row of the exit-code table it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    Usage,
    Corrupt,
    Missing,
    Unsupported,
    Io,
    Refused,
    Locked,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line asks for something impossible (an unknown entry name, a taken tag).
    #[error("{0}")]
    Usage(String),
    /// Something named does not exist: an entry, the repository, the working area.
    #[error("{0}")]
    Missing(String),
    /// A stored file or a working-area file is damaged or inconsistent.
    #[error("{0}")]
    Corrupt(String),
    /// A request the safety policy forbids: a running VM, a non-empty working area, a stored
    /// name leaving the working area, two VMs in one folder.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Unsupported(String),
    /// Another process holds the repository lock.
    #[error("{0}")]
    Locked(String),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error(transparent)]
    Disk(#[from] vmdk_parse::Error),
    #[error(transparent)]
    Vmx(#[from] vmx_parse::Error),
    #[error("{0}")]
    Delta(#[from] vdiff::Error),
    #[error("{0}")]
    Patch(#[from] vpatch::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error about a path.
    pub fn io(path: &Path, source: io::Error) -> Error {
        Error::Io {
            what: path.display().to_string(),
            source,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Usage(_) => ErrorKind::Usage,
            Error::Missing(_) => ErrorKind::Missing,
            Error::Corrupt(_) => ErrorKind::Corrupt,
            Error::Refused(_) => ErrorKind::Refused,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::Locked(_) => ErrorKind::Locked,
            Error::Io { source, .. } => match source.kind() {
                io::ErrorKind::NotFound => ErrorKind::Missing,
                _ => ErrorKind::Io,
            },
            Error::Disk(e) => disk_kind(e.kind()),
            Error::Vmx(e) => match e.kind() {
                vmx_parse::ErrorKind::Corrupt => ErrorKind::Corrupt,
                vmx_parse::ErrorKind::NotFound => ErrorKind::Missing,
                vmx_parse::ErrorKind::Io => ErrorKind::Io,
                vmx_parse::ErrorKind::Refused => ErrorKind::Refused,
                _ => ErrorKind::Corrupt,
            },
            Error::Delta(e) => match e {
                vdiff::Error::Disk(d) => disk_kind(d.kind()),
                vdiff::Error::Io(_) | vdiff::Error::Changed(_) => ErrorKind::Io,
                // Writing the delta failed (disk full, file too large): not a corrupt input.
                vdiff::Error::Format(vdiff::format::Error::Io(_)) => ErrorKind::Io,
                vdiff::Error::Usage(_) => ErrorKind::Usage,
                _ => ErrorKind::Corrupt,
            },
            Error::Patch(e) => match e {
                vpatch::Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                    ErrorKind::Missing
                }
                vpatch::Error::Io { .. } => ErrorKind::Io,
                vpatch::Error::Usage(_) => ErrorKind::Usage,
                _ => ErrorKind::Corrupt,
            },
        }
    }
}

fn disk_kind(k: vmdk_parse::ErrorKind) -> ErrorKind {
    match k {
        vmdk_parse::ErrorKind::Corrupt => ErrorKind::Corrupt,
        vmdk_parse::ErrorKind::NotFound => ErrorKind::Missing,
        vmdk_parse::ErrorKind::Unsupported => ErrorKind::Unsupported,
        vmdk_parse::ErrorKind::Io => ErrorKind::Io,
        vmdk_parse::ErrorKind::Refused => ErrorKind::Refused,
        vmdk_parse::ErrorKind::OutOfRange => ErrorKind::Usage,
    }
}

/// A path for messages, relative names kept as given.
pub fn shown(p: &Path) -> String {
    p.display().to_string()
}

/// Attach a path to an I/O result.
pub trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T>;
    fn doing(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
    fn doing(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Io {
            what: what(),
            source: e,
        })
    }
}
