//! `vmdk-parse`: read any VMDK (or raw image) and its snapshot chain from the command line.
//! A thin binary: argument parsing, opening, one library call, printing.

use clap::{Parser, Subcommand};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use vmdk_parse::write::{AdapterType, Subformat, WriteError, WriteOptions};
use vmdk_parse::{cat, check, info, Disk, ErrorKind, OpenOptions};
use vml_cli::{Exit, Failure};

/// Read every VMDK variant and VMware snapshot chain, and raw images, as the guest sees them.
///
/// DISK is a descriptor file, a monolithic sparse or streamOptimized file, an ESXi delta
/// descriptor, or a raw image. Snapshot chains are followed through parentFileNameHint.
/// Exit codes: 0 ok, 1 check found problems, 2 usage, 3 corrupt input, 4 missing file,
/// 5 unsupported, 6 I/O error, 7 refused by the path policy (see docs/exit-codes.md).
#[derive(Parser)]
#[command(name = "vmdk-parse", version)]
struct Cli {
    /// Follow extent and parent paths that leave the disk's folder (absolute paths, `..`,
    /// symbolic links). Default: refuse them, so a crafted descriptor cannot make us read
    /// files elsewhere on this host.
    #[arg(long, global = true)]
    allow_outside: bool,

    /// The folder extent and parent paths may not leave (default: the disk's folder). Give
    /// the VM's folder to open a snapshot link kept in a subfolder (VMware's `workingDir`)
    /// whose parent is `../disk.vmdk`; paths leaving DIR stay refused.
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print one JSON object: createType, capacity, descriptor keys, extents with their header
    /// fields, the chain with CIDs, and data/zero/unallocated byte totals.
    Info { disk: PathBuf },
    /// Print the allocation map as JSON Lines: one record per contiguous range with its
    /// state (data, zero, unallocated), the chain link holding it and the file.
    Map { disk: PathBuf },
    /// Write the guest-visible bytes to stdout, or to OUT as a sparse file (holes where the
    /// disk is unallocated or zero). OUT is written under a temporary name and renamed when
    /// complete; a block device is written in place.
    Cat {
        disk: PathBuf,
        /// Output file; `-` or none for stdout (which must not be a terminal).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Flush OUT to stable storage before renaming it into place (default: no, like cp and
        /// qemu-img convert; use it when the copy must survive a power cut right away).
        #[arg(long, requires = "output")]
        sync: bool,
    },
    /// Check structural consistency: grain directories against their redundant copy, tables
    /// and grains in range and not overlapping, header newline bytes, dirty flag, CID chain.
    /// Prints a JSON report; exits 0 when clean, 1 when problems were found.
    Check { disk: PathBuf },
    /// Print the descriptor text (embedded or separate) of the disk.
    Descriptor { disk: PathBuf },
    /// Write the disk in another format: raw (as `cat -o`) or a VMDK subformat. Data stays
    /// data, zero ranges read as zeros (left unallocated, or holes), unallocated ranges stay
    /// unallocated. Every file is written under a temporary name and renamed when complete; a
    /// failed run leaves nothing under OUT's name (nor its extents' names).
    Convert {
        disk: PathBuf,
        /// Output format.
        #[arg(short = 'O', long = "format", value_enum)]
        format: Format,
        /// Output file (for the split and flat formats, the descriptor; extents are named
        /// after it: NAME-flat.vmdk, NAME-s001.vmdk, NAME-f001.vmdk).
        #[arg(short, long)]
        output: PathBuf,
        /// ddb.adapterType of the new descriptor.
        #[arg(long, value_enum, default_value = "lsilogic")]
        adapter_type: Adapter,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    #[value(name = "raw")]
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum Adapter {
    #[value(name = "ide")]
    Ide,
    #[value(name = "buslogic")]
    Buslogic,
    #[value(name = "lsilogic")]
    Lsilogic,
    #[value(name = "legacyESX")]
    LegacyEsx,
}

fn exit_for(kind: ErrorKind) -> Exit {
    match kind {
        ErrorKind::Corrupt => Exit::Corrupt,
        ErrorKind::NotFound => Exit::Missing,
        ErrorKind::Unsupported => Exit::Unsupported,
        ErrorKind::Io => Exit::Io,
        ErrorKind::Refused => Exit::Refused,
        ErrorKind::OutOfRange => Exit::Usage,
    }
}

fn fail(e: vmdk_parse::Error) -> Failure {
    Failure::new(exit_for(e.kind()), e)
}

fn fail_write(e: WriteError) -> Failure {
    match e {
        WriteError::Disk(e) => fail(e),
        e @ WriteError::Output { .. } => Failure::new(Exit::Io, e),
        e @ WriteError::Unsupported { .. } => Failure::new(Exit::Unsupported, e),
        e @ WriteError::Invalid { .. } => Failure::new(Exit::Usage, e),
    }
}

fn main() -> ExitCode {
    if let Some(code) = vml_cli::generate::if_asked::<Cli>() {
        return code;
    }
    let cli = Cli::parse();
    vml_cli::finish("vmdk-parse", run(cli))
}

fn run(cli: Cli) -> Result<Exit, Failure> {
    let opts = OpenOptions {
        allow_outside: cli.allow_outside,
        root: cli.root.clone(),
        tolerate_chain_problems: matches!(cli.command, Command::Check { .. }),
        source: None,
    };
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let written = match &cli.command {
        Command::Info { disk } => {
            let d = Disk::open_with(disk, &opts).map_err(fail)?;
            let doc = info::info(&d).map_err(fail)?;
            serde_json::to_writer_pretty(&mut out, &doc)
                .map_err(io::Error::from)
                .and_then(|_| writeln!(out))
        }
        Command::Map { disk } => {
            let d = Disk::open_with(disk, &opts).map_err(fail)?;
            let mut res = Ok(());
            for r in d.map() {
                let r = r.map_err(fail)?;
                res = serde_json::to_writer(&mut out, &info::MapRecord::new(&d, &r))
                    .map_err(io::Error::from)
                    .and_then(|_| writeln!(out));
                if res.is_err() {
                    break;
                }
            }
            res
        }
        Command::Cat { disk, output, sync } => {
            let output = output.as_ref().filter(|o| o.as_os_str() != "-");
            if output.is_none() {
                vml_cli::refuse_terminal_stdout("disk bytes")?;
            }
            let d = Disk::open_with(disk, &opts).map_err(fail)?;
            let res = match output {
                Some(path) => cat::cat_to_path(&d, path, cat::CatOptions { sync: *sync }),
                None => cat::cat_to_writer(&d, &mut out),
            };
            match res {
                Ok(()) => Ok(()),
                Err(cat::CatError::Disk(e)) => return Err(fail(e)),
                // Stdout: a closed pipe is a quiet end, decided below with the other output errors.
                Err(cat::CatError::Output { source, .. }) if output.is_none() => Err(source),
                Err(e @ cat::CatError::Output { .. }) => return Err(Failure::new(Exit::Io, e)),
            }
        }
        Command::Convert {
            disk,
            format,
            output,
            adapter_type,
        } => {
            let d = Disk::open_with(disk, &opts).map_err(fail)?;
            let subformat = match format {
                Format::Raw => {
                    return match cat::cat_to_path(&d, output, cat::CatOptions::default()) {
                        Ok(()) => Ok(Exit::Ok),
                        Err(cat::CatError::Disk(e)) => Err(fail(e)),
                        Err(e) => Err(Failure::new(Exit::Io, e)),
                    };
                }
                Format::MonolithicSparse => Subformat::MonolithicSparse,
                Format::StreamOptimized => Subformat::StreamOptimized,
                Format::MonolithicFlat => Subformat::MonolithicFlat,
                Format::TwoGbMaxExtentSparse => Subformat::TwoGbMaxExtentSparse,
                Format::TwoGbMaxExtentFlat => Subformat::TwoGbMaxExtentFlat,
            };
            let wopts = WriteOptions {
                adapter_type: match adapter_type {
                    Adapter::Ide => AdapterType::Ide,
                    Adapter::Buslogic => AdapterType::Buslogic,
                    Adapter::Lsilogic => AdapterType::Lsilogic,
                    Adapter::LegacyEsx => AdapterType::LegacyEsx,
                },
                ..WriteOptions::default()
            };
            vmdk_parse::write::write_disk(&d, output, subformat, &wopts).map_err(fail_write)?;
            return Ok(Exit::Ok);
        }
        Command::Check { disk } => {
            let report = check::check_path(disk, &opts).map_err(fail)?;
            let clean = report.clean;
            serde_json::to_writer_pretty(&mut out, &report)
                .map_err(io::Error::from)
                .and_then(|_| writeln!(out))
                .and_then(|_| out.flush())
                .or_else(|e| vml_cli::output_error(e, "stdout").map(|_| ()))?;
            return Ok(if clean { Exit::Ok } else { Exit::No });
        }
        Command::Descriptor { disk } => {
            let d = Disk::open_with(disk, &opts).map_err(fail)?;
            match &d.links[0].descriptor {
                Some(desc) => out.write_all(desc.text.as_bytes()),
                None => {
                    return Err(Failure::new(
                        Exit::No,
                        format!(
                            "{}: has no descriptor ({:?} file)",
                            disk.display(),
                            d.links[0].format
                        ),
                    ))
                }
            }
        }
    };
    match written.and_then(|_| out.flush()) {
        Ok(()) => Ok(Exit::Ok),
        Err(e) => vml_cli::output_error(e, "stdout"),
    }
}
