//! `vmx-parse`: read and change VMware `.vmx`/`.vmsd` files without breaking them, and list the
//! files that make up a VM. A thin binary: argument parsing, reading, one library call, printing.

use clap::{Args, Parser, Subcommand};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vml_cli::{Exit, Failure};
use vmx_parse::{report, Document, ErrorKind, FilesOptions};

const TOOL: &str = "vmx-parse";

/// Read and change VMware .vmx and .vmsd files losslessly, and list the files of a VM.
///
/// VMX and VMSD may be `-` for stdin (except for `files`, which needs the VM's folder).
/// A line with bytes invalid in the file's encoding is not an error: it is read with U+FFFD,
/// written back byte for byte, and reported as a warning on stderr (and under `problems` by
/// `show` and `vmsd`).
/// Exit codes: 0 ok, 1 a key asked for by `get` is absent, 2 usage, 3 corrupt input,
/// 4 missing file, 5 unsupported, 6 I/O error, 7 refused by the path policy
/// (see docs/exit-codes.md).
#[derive(Parser)]
#[command(name = "vmx-parse", version)]
struct Cli {
    /// `files`: follow disk paths that leave the VM's folder (absolute paths, `..`, symbolic
    /// links). Default: refuse them (exit 7), as vmdk-parse does.
    #[arg(long, global = true)]
    allow_outside: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Output {
    /// Write the result to OUT (atomically: a temporary file renamed into place) instead of
    /// stdout. Default: stdout.
    #[arg(short, long, value_name = "OUT", conflicts_with = "in_place")]
    output: Option<PathBuf>,
    /// Replace the input file (a temporary file in its folder, renamed over it).
    #[arg(long)]
    in_place: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Print one JSON object: the structured view (name, guest OS, memory, CPUs, firmware,
    /// UUIDs, disks, CD-ROMs, NICs, nvram, suspend state), every key/value, warnings and
    /// damaged lines (`problems`).
    Show { vmx: PathBuf },
    /// Print the values of KEYs (any case), one per line; exit 1 if one is absent. A damaged
    /// value (bytes invalid in the file's encoding) is printed with U+FFFD, with a warning.
    Get {
        vmx: PathBuf,
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Set KEY=VALUE: only the lines concerned change (a damaged line of another key keeps its
    /// bytes; the line of a damaged KEY is replaced). With no assignment the input is
    /// reproduced exactly.
    Set {
        vmx: PathBuf,
        #[arg(value_name = "KEY=VALUE")]
        assignments: Vec<String>,
        #[command(flatten)]
        output: Output,
    },
    /// Remove every line with one of the KEYs (any case).
    Unset {
        vmx: PathBuf,
        #[arg(required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        output: Output,
    },
    /// Print the VM's files as JSON Lines: path, role, size, exists, inside the folder, disk
    /// and depth in its chain.
    Files { vmx: PathBuf },
    /// Print the snapshot tree of a .vmsd as one JSON object.
    Vmsd { vmsd: PathBuf },
}

fn fail(e: vmx_parse::Error) -> Failure {
    let exit = match e.kind() {
        ErrorKind::Corrupt => Exit::Corrupt,
        ErrorKind::NotFound => Exit::Missing,
        ErrorKind::Unsupported => Exit::Unsupported,
        ErrorKind::Io => Exit::Io,
        ErrorKind::Refused => Exit::Refused,
        ErrorKind::BadRequest => Exit::Usage,
    };
    Failure::new(exit, e)
}

fn is_stdin(p: &Path) -> bool {
    p.as_os_str() == "-"
}

fn warn(path: &Path, what: impl std::fmt::Display) {
    let _ = writeln!(io::stderr(), "{TOOL}: warning: {}: {what}", path.display());
}

/// Read and parse a file or stdin, printing tolerated oddities and damaged lines (bytes invalid
/// in the file's encoding) as warnings on stderr, in line order.
fn load(path: &Path) -> Result<Document, Failure> {
    let doc = if is_stdin(path) {
        let bytes = vmx_parse::read_capped(io::stdin().lock(), path).map_err(fail)?;
        Document::parse(path, &bytes)
    } else {
        Document::open(path)
    }
    .map_err(fail)?;
    let mut notes: Vec<(usize, String)> = doc
        .warnings()
        .iter()
        .map(|w| (w.line, w.message.clone()))
        .collect();
    notes.extend(doc.problems().into_iter().map(|p| match p.key {
        Some(k) => (p.line, format!("{k}: {}", p.message)),
        None => (p.line, p.message),
    }));
    notes.sort_by_key(|n| n.0);
    for (line, what) in notes {
        warn(path, format!("line {line}: {what}"));
    }
    Ok(doc)
}

fn main() -> ExitCode {
    if let Some(code) = vml_cli::generate::if_asked::<Cli>() {
        return code;
    }
    let cli = Cli::parse();
    vml_cli::finish(TOOL, run(cli))
}

fn write_result(input: &Path, doc: &Document, output: &Output) -> Result<Exit, Failure> {
    let bytes = doc.to_bytes();
    let target = match (&output.output, output.in_place) {
        (_, true) if is_stdin(input) => {
            return Err(Failure::new(
                Exit::Usage,
                "--in-place needs a file, not stdin",
            ))
        }
        (_, true) => Some(input),
        (Some(o), false) if !is_stdin(o) => Some(o.as_path()),
        _ => None,
    };
    match target {
        Some(path) => {
            vmx_parse::write_atomically(path, &bytes, input).map_err(fail)?;
            Ok(Exit::Ok)
        }
        None => {
            let mut out = io::stdout().lock();
            match out.write_all(&bytes).and_then(|_| out.flush()) {
                Ok(()) => Ok(Exit::Ok),
                Err(e) => vml_cli::output_error(e, "stdout"),
            }
        }
    }
}

fn run(cli: Cli) -> Result<Exit, Failure> {
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let display = |p: &Path| p.to_string_lossy().into_owned();
    let written = match &cli.command {
        Command::Show { vmx } => {
            let doc = load(vmx)?;
            serde_json::to_writer_pretty(&mut out, &report::show(&display(vmx), &doc))
                .map_err(io::Error::from)
                .and_then(|_| writeln!(out))
        }
        Command::Vmsd { vmsd } => {
            let doc = load(vmsd)?;
            serde_json::to_writer_pretty(&mut out, &report::vmsd(&display(vmsd), &doc))
                .map_err(io::Error::from)
                .and_then(|_| writeln!(out))
        }
        Command::Get { vmx, keys } => {
            let doc = load(vmx)?;
            let mut absent = Vec::new();
            let mut res = Ok(());
            for k in keys {
                match doc.get(k) {
                    Some(v) => res = res.and_then(|_| writeln!(out, "{v}")),
                    None => absent.push(k.as_str()),
                }
            }
            if !absent.is_empty() {
                res.and_then(|_| out.flush())
                    .or_else(|e| vml_cli::output_error(e, "stdout").map(|_| ()))?;
                return Err(Failure::new(
                    Exit::No,
                    format!("{}: no such key: {}", vmx.display(), absent.join(", ")),
                ));
            }
            res
        }
        Command::Set {
            vmx,
            assignments,
            output,
        } => {
            let mut parsed = Vec::new();
            for a in assignments {
                let Some((k, v)) = a.split_once('=') else {
                    return Err(Failure::new(Exit::Usage, format!("{a:?} is not KEY=VALUE")));
                };
                parsed.push((k, v));
            }
            let mut doc = load(vmx)?;
            for (k, v) in parsed {
                doc.set(k, v).map_err(fail)?;
            }
            drop(out);
            return write_result(vmx, &doc, output);
        }
        Command::Unset { vmx, keys, output } => {
            let mut doc = load(vmx)?;
            for k in keys {
                doc.unset(k);
            }
            drop(out);
            return write_result(vmx, &doc, output);
        }
        Command::Files { vmx } => {
            if is_stdin(vmx) {
                return Err(Failure::new(
                    Exit::Usage,
                    "files needs the .vmx file itself (its folder is listed), not stdin",
                ));
            }
            let doc = load(vmx)?;
            let opts = FilesOptions {
                allow_outside: cli.allow_outside,
            };
            let inv = vmx_parse::inventory(vmx, &doc, &opts).map_err(fail)?;
            for lock in inv.locks() {
                warn(vmx, format!("lock {}: the VM may be running", lock.path));
            }
            let mut res = Ok(());
            for f in &inv.files {
                res = serde_json::to_writer(&mut out, f)
                    .map_err(io::Error::from)
                    .and_then(|_| writeln!(out));
                if res.is_err() {
                    break;
                }
            }
            res
        }
    };
    match written.and_then(|_| out.flush()) {
        Ok(()) => Ok(Exit::Ok),
        Err(e) => vml_cli::output_error(e, "stdout"),
    }
}
