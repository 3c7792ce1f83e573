//! Man pages and shell completions, generated from a tool's own clap definition.
//!
//! Every binary answers a hidden first argument, `TOOL --generate KIND [DIR]`, KIND one of
//! `man`, `bash`, `zsh`, `fish`. Without DIR the page or script goes to stdout (for `man`, the
//! tool's own page: `vrepo --generate man | man -l -`). With DIR it is written there under the
//! name each system looks for: `TOOL.1` and one `TOOL-SUBCOMMAND.1` per subcommand, `TOOL`
//! (bash-completion's on-demand name), `_TOOL` (zsh), `TOOL.fish`. The root `Makefile`
//! installs them this way, so the pages and completions are those of the binaries installed.
//!
//! It is a first argument checked before the tool's parser, not a clap option of each tool,
//! because the tools with subcommands require one, and clap checks that before anything else.
//! It is left out of `--help`, the man pages and the completions: it is a packaging step.

use crate::{Exit, Failure};
use clap::{Arg, CommandFactory, ValueEnum};
use clap_complete::Shell;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The hidden argument that asks for generation.
pub const FLAG: &str = "--generate";

/// What `--generate` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// The man pages (section 1).
    Man,
    /// bash completion.
    Bash,
    /// zsh completion.
    Zsh,
    /// fish completion.
    Fish,
}

/// For `TOOL --generate KIND [DIR]`, write the man page or completion script of `C` and return
/// the exit code; for any other command line, `None`, and the tool parses it as usual.
///
/// ```no_run
/// # #[derive(clap::Parser)] struct Cli {}
/// # fn main() -> std::process::ExitCode {
/// if let Some(code) = vml_cli::generate::if_asked::<Cli>() {
///     return code;
/// }
/// # std::process::ExitCode::SUCCESS }
/// ```
pub fn if_asked<C: CommandFactory>() -> Option<ExitCode> {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_none_or(|a| a != FLAG) {
        return None;
    }
    let cmd = C::command();
    let tool = cmd.get_name().to_owned();
    let request = clap::Command::new("generate")
        .bin_name(format!("{tool} {FLAG}"))
        .no_binary_name(true)
        .about(
            "Write a man page or shell completion script generated from the tool's clap definition",
        )
        .arg(
            Arg::new("kind")
                .value_name("KIND")
                .required(true)
                .value_parser(clap::builder::EnumValueParser::<Kind>::new()),
        )
        .arg(
            Arg::new("dir")
                .value_name("DIR")
                .help("Write the file(s) into DIR under their installed names (default: stdout)")
                .value_parser(clap::value_parser!(PathBuf)),
        )
        .get_matches_from(&args[2..]);
    let kind = *request.get_one::<Kind>("kind").expect("required");
    let dir = request.get_one::<PathBuf>("dir");
    let result = match dir {
        Some(dir) => to_dir(cmd, kind, dir),
        None => to_stdout(cmd, kind),
    };
    Some(crate::finish(&tool, result))
}

/// The name a system looks for: the man page of `tool`, or its completion script for a shell.
fn file_name(tool: &str, kind: Kind) -> String {
    match kind {
        Kind::Man => format!("{tool}.1"),
        Kind::Bash => tool.to_owned(),
        Kind::Zsh => format!("_{tool}"),
        Kind::Fish => format!("{tool}.fish"),
    }
}

fn shell(kind: Kind) -> Option<Shell> {
    match kind {
        Kind::Man => None,
        Kind::Bash => Some(Shell::Bash),
        Kind::Zsh => Some(Shell::Zsh),
        Kind::Fish => Some(Shell::Fish),
    }
}

fn render(mut cmd: clap::Command, kind: Kind, out: &mut dyn Write) -> io::Result<()> {
    match shell(kind) {
        Some(shell) => {
            let name = cmd.get_name().to_owned();
            clap_complete::generate(shell, &mut cmd, name, out);
            Ok(())
        }
        None => clap_mangen::Man::new(cmd).render(out),
    }
}

fn to_stdout(cmd: clap::Command, kind: Kind) -> Result<Exit, Failure> {
    let mut out = io::stdout().lock();
    match render(cmd, kind, &mut out).and_then(|_| out.flush()) {
        Ok(()) => Ok(Exit::Ok),
        Err(e) => crate::output_error(e, "stdout"),
    }
}

fn to_dir(cmd: clap::Command, kind: Kind, dir: &Path) -> Result<Exit, Failure> {
    let io_error =
        |path: &Path, e: io::Error| Failure::new(Exit::Io, format!("{}: {e}", path.display()));
    if kind == Kind::Man {
        // The tool's page and one per subcommand (vrepo-save.1, ...), named as clap_mangen names them.
        clap_mangen::generate_to(cmd, dir).map_err(|e| io_error(dir, e))?;
        return Ok(Exit::Ok);
    }
    let path = dir.join(file_name(cmd.get_name(), kind));
    let mut file = File::create(&path).map_err(|e| io_error(&path, e))?;
    render(cmd, kind, &mut file)
        .and_then(|_| file.flush())
        .map_err(|e| io_error(&path, e))?;
    Ok(Exit::Ok)
}
