//! `vpatch`: apply VML deltas to a base image. A thin binary: argument parsing, opening, one
//! library call, publishing the output.

use clap::{Parser, ValueEnum};
use std::fs::File;
use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vdiff::Image;
use vmdk_parse::write::{Subformat, VmdkWriter, WriteError, WriteOptions};
use vmdk_parse::{Disk, ErrorKind, OpenOptions};
use vml_cli::{Exit, Failure};
use vpatch::{DeltaFile, DeltaInput, Error};

/// Apply one delta, or a chain of deltas in one pass, to BASE and write the target to OUT.
///
/// BASE is any disk vmdk-parse opens (VMDK of any variant or chain, or raw); with --full there
/// is no BASE and the first DELTA must be a full delta (`vdiff --full`). A DELTA of `-` is read
/// from stdin (at most one); with no DELTA named, the delta is read from stdin (when it is not a
/// terminal), as `patch` and `zstd -d` do. Deltas made for another base are refused before anything is
/// written; OUT is written under a temporary name and renamed only after the target digest
/// checked out, so a failed run leaves no output. Exit codes: 0 ok, 2 usage, 3 corrupt or
/// mismatched delta, 4 missing file, 5 unsupported, 6 I/O error, 7 refused by the path policy
/// (see docs/exit-codes.md).
#[derive(Parser)]
#[command(name = "vpatch", version)]
struct Cli {
    /// BASE then DELTA...; with --full, DELTA... alone. No DELTA: one from stdin.
    #[arg(value_name = "BASE DELTA")]
    inputs: Vec<PathBuf>,
    /// There is no base: the first delta is a full delta.
    #[arg(long)]
    full: bool,
    /// The output file (a sparse raw image, or a VMDK with --format).
    #[arg(short, long, value_name = "OUT", required_unless_present_any = ["in_place", "restore"])]
    output: Option<PathBuf>,
    /// Update BASE, a raw image or a flat VMDK (monolithicFlat, twoGbMaxExtentFlat, vmfs; its
    /// flat extents are written through the descriptor), directly: only changed ranges are
    /// written, after their old contents were saved to an undo file; on any failure BASE is
    /// put back.
    #[arg(long, conflicts_with_all = ["output", "full", "format"])]
    in_place: bool,
    /// The undo file of --in-place (default: BASE.vpatch-undo); it must not exist.
    #[arg(long, value_name = "UNDO", requires = "in_place")]
    undo: Option<PathBuf>,
    /// Put back the old contents an interrupted --in-place saved: `vpatch --restore UNDO BASE`.
    #[arg(long, value_name = "UNDO", conflicts_with_all = ["output", "full", "in_place"])]
    restore: Option<PathBuf>,
    /// Output format (default raw): `raw` is a sparse file; the VMDK formats are written by
    /// vmdk-parse's writer with its defaults (zero and unallocated ranges both left
    /// unallocated; separate extent files go next to OUT).
    #[arg(long, value_enum, default_value_t = Format::Raw)]
    format: Format,
    /// Do not check the base's image digest (default: check it, while the output is produced,
    /// or up front with --in-place). The size is still checked, and a wrong base still fails
    /// the target digest check at the end.
    #[arg(long)]
    trust_base: bool,
    /// Follow extent and parent paths that leave the base's folder (default: refuse them).
    #[arg(long)]
    allow_outside: bool,
    /// The folder the base's extent and parent paths may not leave (default: the base's
    /// folder), e.g. the VM's folder for a snapshot link in a subfolder naming `../disk.vmdk`.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Raw,
    #[value(name = "monolithicSparse")]
    MonolithicSparse,
    #[value(name = "streamOptimized")]
    StreamOptimized,
    #[value(name = "monolithicFlat")]
    MonolithicFlat,
    #[value(name = "twoGbMaxExtentSparse")]
    TwoGbMaxExtentSparse,
    #[value(name = "twoGbMaxExtentFlat")]
    TwoGbMaxExtentFlat,
}

impl Format {
    fn subformat(self) -> Option<Subformat> {
        Some(match self {
            Format::Raw => return None,
            Format::MonolithicSparse => Subformat::MonolithicSparse,
            Format::StreamOptimized => Subformat::StreamOptimized,
            Format::MonolithicFlat => Subformat::MonolithicFlat,
            Format::TwoGbMaxExtentSparse => Subformat::TwoGbMaxExtentSparse,
            Format::TwoGbMaxExtentFlat => Subformat::TwoGbMaxExtentFlat,
        })
    }
}

fn write_fail(e: WriteError) -> Failure {
    let exit = match e {
        WriteError::Unsupported { .. } => Exit::Unsupported,
        WriteError::Invalid { .. } => Exit::Usage,
        _ => Exit::Io,
    };
    Failure::new(exit, e)
}

fn exit_for(e: &Error) -> Exit {
    match e {
        Error::Delta {
            source: vdiff::format::Error::Io(_),
            ..
        }
        | Error::Io { .. } => Exit::Io,
        Error::Delta { .. } | Error::WrongBase(_) | Error::TargetDigest | Error::Undo(_) => {
            Exit::Corrupt
        }
        Error::Usage(_) => Exit::Usage,
        Error::Base(vdiff::Error::Disk(d)) => match d.kind() {
            ErrorKind::Corrupt => Exit::Corrupt,
            ErrorKind::NotFound => Exit::Missing,
            ErrorKind::Unsupported => Exit::Unsupported,
            ErrorKind::Io => Exit::Io,
            ErrorKind::Refused => Exit::Refused,
            ErrorKind::OutOfRange => Exit::Corrupt,
        },
        Error::Base(_) => Exit::Io,
    }
}

fn fail(e: Error) -> Failure {
    Failure::new(exit_for(&e), e)
}

fn main() -> ExitCode {
    if let Some(code) = vml_cli::generate::if_asked::<Cli>() {
        return code;
    }
    vml_cli::finish("vpatch", run(Cli::parse()))
}

fn open_delta(path: &Path) -> Result<DeltaInput, Failure> {
    if path.as_os_str() == "-" {
        // A pipe cannot be read twice: spool it to an anonymous file first.
        let mut f = tempfile::tempfile()
            .map_err(|e| Failure::new(Exit::Io, format!("temporary file: {e}")))?;
        io::copy(&mut io::stdin().lock(), &mut f)
            .map_err(|e| Failure::new(Exit::Io, format!("stdin: {e}")))?;
        let file = DeltaFile::from_file(f)
            .map_err(|e| Failure::new(Exit::Io, format!("temporary file: {e}")))?;
        return Ok(DeltaInput {
            name: "stdin".into(),
            file,
        });
    }
    let file = File::open(path).map_err(|e| {
        let exit = if e.kind() == io::ErrorKind::NotFound {
            Exit::Missing
        } else {
            Exit::Io
        };
        Failure::new(exit, format!("{}: {e}", path.display()))
    })?;
    let file = DeltaFile::from_file(file)
        .map_err(|e| Failure::new(Exit::Io, format!("{}: {e}", path.display())))?;
    Ok(DeltaInput {
        name: path.display().to_string(),
        file,
    })
}

fn run(cli: Cli) -> Result<Exit, Failure> {
    if let Some(undo) = &cli.restore {
        let [base] = cli.inputs.as_slice() else {
            return Err(Failure::new(Exit::Usage, "--restore UNDO takes BASE alone"));
        };
        let opts = OpenOptions {
            allow_outside: cli.allow_outside,
            root: cli.root.clone(),
            ..OpenOptions::default()
        };
        vpatch::inplace::restore_with(undo, base, &opts).map_err(fail)?;
        return Ok(Exit::Ok);
    }
    let (base_path, named) = if cli.full {
        (None, &cli.inputs[..])
    } else if let Some((base, deltas)) = cli.inputs.split_first() {
        (Some(base), deltas)
    } else {
        return Err(Failure::new(
            Exit::Usage,
            "expected BASE DELTA... (or --full DELTA...; no DELTA: one from stdin)",
        ));
    };
    // No delta named: the one on stdin, as patch and zstd -d read theirs.
    let from_stdin = [PathBuf::from("-")];
    let delta_paths: &[PathBuf] = if named.is_empty() {
        if io::stdin().is_terminal() {
            return Err(Failure::new(
                Exit::Usage,
                "no DELTA named and stdin is a terminal: name a delta file, or pipe one in",
            ));
        }
        &from_stdin
    } else {
        named
    };
    if delta_paths.iter().filter(|p| p.as_os_str() == "-").count() > 1 {
        return Err(Failure::new(
            Exit::Usage,
            "at most one delta can come from stdin",
        ));
    }
    let base_disk = match base_path {
        Some(p) => Some(
            Disk::open_with(
                p,
                &OpenOptions {
                    allow_outside: cli.allow_outside,
                    root: cli.root.clone(),
                    tolerate_chain_problems: false,
                    source: None,
                },
            )
            .map_err(|e| fail(Error::Base(e.into())))?,
        ),
        None => None,
    };
    let base = base_disk.as_ref().map(|d| d as &dyn Image);
    let mut deltas = delta_paths
        .iter()
        .map(|p| open_delta(p))
        .collect::<Result<Vec<_>, _>>()?;
    let headers = vpatch::read_headers(&mut deltas).map_err(fail)?;
    // In place, a wrong base is refused before the base is touched: its digest is checked up
    // front. Into a new OUT, the base digest is checked while the output is produced (one read
    // of the base serves both), and OUT is published only when both digests hold.
    let check_up_front = cli.in_place && !cli.trust_base;
    let base_chunks =
        vpatch::check_base(base, &headers[0], &deltas[0].name, check_up_front).map_err(fail)?;
    let base_chunks = base_chunks.as_deref();
    let opts = vpatch::ApplyOptions {
        base_chunks,
        verify_base: !cli.trust_base && !cli.in_place,
        ..Default::default()
    };

    if cli.in_place {
        let (Some(path), Some(disk)) = (base_path, base_disk.as_ref()) else {
            return Err(Failure::new(Exit::Usage, "--in-place needs BASE"));
        };
        if let Some(why) = vpatch::inplace::unsupported(disk) {
            return Err(Failure::new(
                Exit::Unsupported,
                format!("{}: --in-place: {why}", path.display()),
            ));
        }
        let target_size = headers.last().map_or(0, |h| h.target_size);
        if disk.links[0].format != vmdk_parse::LinkFormat::Raw && target_size != disk.size() {
            return Err(Failure::new(
                Exit::Unsupported,
                format!(
                    "{}: --in-place keeps a flat VMDK's size ({} bytes); the target has {target_size}",
                    path.display(),
                    disk.size()
                ),
            ));
        }
        let undo = cli.undo.clone().unwrap_or_else(|| {
            let mut u = path.clone().into_os_string();
            u.push(".vpatch-undo");
            PathBuf::from(u)
        });
        vpatch::inplace::apply_in_place_disk(disk, base_chunks, path, deltas, &undo)
            .map_err(fail)?;
        return Ok(Exit::Ok);
    }
    let out = cli.output.as_ref().expect("clap requires -o");
    let size = headers.last().map_or(0, |h| h.target_size);
    if let Some(sub) = cli.format.subformat() {
        // The writer keeps its files under temporary names until `finish`, which comes only
        // after the target digest checked out; dropped on error, it removes them.
        let mut w =
            VmdkWriter::create(out, sub, size, &WriteOptions::default()).map_err(write_fail)?;
        vpatch::apply_with(base, deltas, &mut vpatch::VmdkSink(&mut w), &opts).map_err(fail)?;
        w.finish().map_err(write_fail)?;
        return Ok(Exit::Ok);
    }
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let io_fail = |e: io::Error| Failure::new(Exit::Io, format!("{}: {e}", out.display()));
    let tmp = tempfile::Builder::new()
        .prefix(".vpatch-")
        .tempfile_in(dir)
        .map_err(io_fail)?;
    tmp.as_file().set_len(size).map_err(io_fail)?;
    // On any error `tmp` is dropped and removed: no output.
    let mut sink = vpatch::DirectRawSink(vmdk_parse::cat::SparseOut {
        file: tmp.as_file(),
        direct: vmdk_parse::cat::open_direct(tmp.path()),
    });
    vpatch::apply_with(base, deltas, &mut sink, &opts).map_err(fail)?;
    tmp.persist(out).map_err(|e| io_fail(e.error))?;
    Ok(Exit::Ok)
}
