//! Shared command-line plumbing for the VML tools.
//!
//! Every VML binary is a thin `main` over a library. What the binaries have in common lives
//! here, once: the exit-code table, the one-line error format, the refusal to write binary data
//! to a terminal, and quiet handling of a closed pipe (`vmdk-parse cat disk.vmdk | head`).
//!
//! The exit-code table is documented in `docs/exit-codes.md`; a test there keeps the two in step.

pub mod generate;

use std::fmt::Display;
use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;

/// The exit codes every VML tool uses. The numbers are frozen: scripts depend on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// A "no" answer: `check` found problems, images differ.
    No = 1,
    /// Bad command line, or a request the tool refuses as asked (binary data to a terminal).
    Usage = 2,
    /// An input is corrupt or inconsistent (bad header, table out of range, CID mismatch).
    Corrupt = 3,
    /// An input does not exist.
    Missing = 4,
    /// An input is valid but of a kind this tool does not handle (RDM, device-backed disks).
    Unsupported = 5,
    /// Reading or writing failed (permissions, disk full, I/O error).
    Io = 6,
    /// An input asks for something the safety policy forbids (a path leaving the disk's folder).
    Refused = 7,
    /// A repository is locked by another process.
    Locked = 8,
}

impl Exit {
    /// Every code, in table order.
    pub const ALL: [Exit; 9] = [
        Exit::Ok,
        Exit::No,
        Exit::Usage,
        Exit::Corrupt,
        Exit::Missing,
        Exit::Unsupported,
        Exit::Io,
        Exit::Refused,
        Exit::Locked,
    ];

    /// The number the process exits with.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// A short stable name, used in JSON reports and documentation.
    pub fn name(self) -> &'static str {
        match self {
            Exit::Ok => "ok",
            Exit::No => "no",
            Exit::Usage => "usage",
            Exit::Corrupt => "corrupt",
            Exit::Missing => "missing",
            Exit::Unsupported => "unsupported",
            Exit::Io => "io",
            Exit::Refused => "refused",
            Exit::Locked => "locked",
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

/// An error on its way out of a binary: the message line and the code to exit with.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Display) -> Failure {
        Failure {
            exit,
            message: message.to_string(),
        }
    }
}

/// Whether an I/O error is the reader of our stdout going away (`| head`).
pub fn is_broken_pipe(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

/// Finish a tool run: print `tool: message` on stderr for a failure and pick the exit code.
///
/// A message is always one line: embedded newlines are replaced so that log scrapers and
/// `2>&1 | tail -1` keep working.
pub fn finish(tool: &str, result: Result<Exit, Failure>) -> ExitCode {
    match result {
        Ok(code) => code.into(),
        Err(f) => {
            let line = f.message.replace(['\n', '\r'], " ");
            // If stderr itself is gone there is nobody to tell.
            let _ = writeln!(io::stderr(), "{tool}: {line}");
            f.exit.into()
        }
    }
}

/// Refuse to write binary data to a terminal, as `gzip` and `zstd` do.
pub fn refuse_terminal_stdout(what: &str) -> Result<(), Failure> {
    if io::stdout().is_terminal() {
        return Err(Failure::new(
            Exit::Usage,
            format!("refusing to write {what} to a terminal; redirect stdout or use -o FILE"),
        ));
    }
    Ok(())
}

/// Map an I/O error from writing our own output. A closed pipe is not a failure.
pub fn output_error(e: io::Error, what: &str) -> Result<Exit, Failure> {
    if is_broken_pipe(&e) {
        Ok(Exit::Ok)
    } else {
        Err(Failure::new(Exit::Io, format!("{what}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_ordered() {
        for (i, e) in Exit::ALL.iter().enumerate() {
            assert_eq!(e.code() as usize, i, "{e:?}");
        }
    }

    #[test]
    fn exit_code_table_in_docs_matches() {
        let doc = include_str!("../../docs/exit-codes.md");
        for e in Exit::ALL {
            let row = format!("| {} | `{}` |", e.code(), e.name());
            assert!(
                doc.contains(&row),
                "docs/exit-codes.md lacks the row {row:?}"
            );
        }
    }
}
