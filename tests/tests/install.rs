//! Installed like a Unix tool (issue 19, item 7): the root `Makefile`'s `make install` into a
//! temporary PREFIX, with the binaries this test run built (`BUILD_DIR=target/debug`, so no
//! release build), puts the five binaries, their man pages and their bash, zsh and fish
//! completions where each system looks; every page renders with `man -l` without a warning;
//! bash completion of `vrepo ` offers its subcommands; `make uninstall` removes it all. The
//! Makefile's recipes are shellcheck-clean (the shell they expand to, from `make -n`).
//!
//! `man` (man-db) and `shellcheck` are optional here and skipped with a message, except under
//! `CI`, where a missing one is a failure (`.ci/run` installs both).

mod common;

use common::{fresh_bin, run};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TOOLS: [&str; 5] = ["vmdk-parse", "vmx-parse", "vdiff", "vpatch", "vrepo"];
const VREPO_SUBCOMMANDS: [&str; 14] = [
    "init",
    "save",
    "build",
    "list",
    "tree",
    "vms",
    "show",
    "deps",
    "diff",
    "verify",
    "rm",
    "consolidate",
    "prune",
    "cat",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Whether `program` runs; when it does not, a failure under `CI` and a skip elsewhere.
fn available(program: &str, package: &str) -> bool {
    if Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
    {
        return true;
    }
    let ci = std::env::var("CI").unwrap_or_default();
    assert!(
        ci.is_empty() || ci == "false" || ci == "0",
        "{program} is not installed, and CI={ci}: install the Debian package {package} (.ci/run does)"
    );
    eprintln!("SKIPPED: {program} is not installed (apt-get install {package})");
    false
}

/// The folder of this run's freshly built binaries (target/debug), every tool built.
fn build_dir() -> PathBuf {
    let mut dir = None;
    for t in TOOLS {
        dir = fresh_bin(t, t).parent().map(Path::to_path_buf);
    }
    dir.expect("target dir")
}

fn make(args: &[&str]) -> String {
    let o = run(Command::new("make")
        .arg("--no-print-directory")
        .arg("-C")
        .arg(workspace())
        .args(args));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `make install PREFIX=prefix BUILD_DIR=target/debug`, as a user installs.
fn install(prefix: &Path) -> String {
    make(&[
        "install",
        &format!("PREFIX={}", prefix.display()),
        &format!("BUILD_DIR={}", build_dir().display()),
    ])
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn man_dir(prefix: &Path) -> PathBuf {
    prefix.join("share/man/man1")
}

#[test]
fn make_install_puts_binaries_pages_and_completions_where_systems_look_and_uninstall_removes_them()
{
    let t = tempfile::tempdir().unwrap();
    let prefix = t.path().join("usr");
    let said = install(&prefix);
    assert!(said.contains("installed"), "{said}");
    for tool in TOOLS {
        let bin = prefix.join("bin").join(tool);
        let o = run(Command::new(&bin).arg("--version"));
        assert!(
            String::from_utf8_lossy(&o.stdout).starts_with(tool),
            "{}",
            bin.display()
        );
        for f in [
            man_dir(&prefix).join(format!("{tool}.1")),
            prefix.join("share/bash-completion/completions").join(tool),
            prefix
                .join("share/zsh/site-functions")
                .join(format!("_{tool}")),
            prefix
                .join("share/fish/vendor_completions.d")
                .join(format!("{tool}.fish")),
        ] {
            let len = fs::metadata(&f)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
                .len();
            assert!(len > 0, "{} is empty", f.display());
        }
    }
    // One page per subcommand, as `man vrepo-save` finds it.
    for sub in VREPO_SUBCOMMANDS {
        let page = man_dir(&prefix).join(format!("vrepo-{sub}.1"));
        assert!(page.is_file(), "{}", page.display());
    }
    assert!(man_dir(&prefix).join("vmdk-parse-convert.1").is_file());
    assert!(man_dir(&prefix).join("vmx-parse-set.1").is_file());

    // A second install over the first is fine (an upgrade).
    install(&prefix);

    make(&["uninstall", &format!("PREFIX={}", prefix.display())]);
    let left = files_under(&prefix);
    assert!(left.is_empty(), "uninstall left {left:?}");
}

#[test]
fn every_man_page_renders_with_man_and_the_vrepo_page_names_its_subcommands() {
    if !available("man", "man-db") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let prefix = t.path().join("usr");
    install(&prefix);
    let pages = files_under(&man_dir(&prefix));
    assert!(pages.len() > TOOLS.len(), "{pages:?}");
    for page in &pages {
        // stdout a pipe: no pager; --warnings: groff's complaints about the roff go to stderr.
        let o = run(Command::new("man")
            .args(["--warnings", "-l"])
            .arg(page)
            .env("MANWIDTH", "80")
            .env("LC_ALL", "C.UTF-8"));
        let text = String::from_utf8_lossy(&o.stdout);
        let stem = page.file_stem().unwrap().to_str().unwrap();
        assert!(
            o.stderr.is_empty(),
            "{stem}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS"] {
            assert!(text.contains(section), "{stem} has no {section}:\n{text}");
        }
        // NAME line: `vrepo-save - Save the VM of a working area...` (man hyphenates at width 80).
        assert!(text.contains(stem), "{stem}:\n{text}");
    }
    let vrepo = man_dir(&prefix).join("vrepo.1");
    let o = run(Command::new("man")
        .arg("-l")
        .arg(&vrepo)
        .env("MANWIDTH", "80"));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("SUBCOMMANDS"), "{text}");
    for sub in VREPO_SUBCOMMANDS {
        assert!(
            text.contains(&format!("vrepo-{sub}(1)")),
            "vrepo.1 does not name {sub}:\n{text}"
        );
    }
    // The exit-code table and the repository variable, from the clap definition (words are
    // spread to justify the lines).
    let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(words.contains("VREPO_REPOSITORY"), "{text}");
    assert!(words.contains("8 locked"), "{text}");
}

/// COMPREPLY of the installed bash completion of `tool` for the words `words` (the last one
/// being completed), as bash's programmable completion calls it.
fn bash_complete(prefix: &Path, tool: &str, words: &[&str]) -> Vec<String> {
    let script = prefix.join("share/bash-completion/completions").join(tool);
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let cword = words.len() - 1;
    let line = words.join(" ");
    let prog = format!(
        "source '{}' || exit 9\n\
         complete -p '{tool}' >/dev/null || exit 8\n\
         COMP_WORDS=({})\n\
         COMP_CWORD={cword}\n\
         COMP_LINE='{line}'\n\
         COMP_POINT=${{#COMP_LINE}}\n\
         func=$(complete -p '{tool}' | sed -n 's/.*-F \\([^ ]*\\).*/\\1/p')\n\
         \"$func\" '{tool}' \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script.display(),
        quoted.join(" "),
    );
    let o = run(Command::new("bash").args(["--norc", "--noprofile", "-c", &prog]));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn bash_completion_offers_vrepos_subcommands_and_their_options() {
    let t = tempfile::tempdir().unwrap();
    let prefix = t.path().join("usr");
    install(&prefix);
    let offered = bash_complete(&prefix, "vrepo", &["vrepo", ""]);
    for sub in VREPO_SUBCOMMANDS {
        assert!(
            offered.iter().any(|w| w == sub),
            "`vrepo <TAB>` does not offer {sub}: {offered:?}"
        );
    }
    assert!(offered.iter().any(|w| w == "--repo"), "{offered:?}");

    let offered = bash_complete(&prefix, "vrepo", &["vrepo", "pr"]);
    assert_eq!(offered, ["prune"], "`vrepo pr<TAB>`");

    let offered = bash_complete(&prefix, "vrepo", &["vrepo", "prune", "--keep-"]);
    for opt in [
        "--keep-last",
        "--keep-daily",
        "--keep-weekly",
        "--keep-monthly",
    ] {
        assert!(offered.iter().any(|w| w == opt), "{opt}: {offered:?}");
    }

    let offered = bash_complete(&prefix, "vmdk-parse", &["vmdk-parse", ""]);
    for sub in ["info", "map", "cat", "check", "descriptor", "convert"] {
        assert!(offered.iter().any(|w| w == sub), "{sub}: {offered:?}");
    }
}

#[test]
fn zsh_and_fish_completions_name_vrepos_subcommands() {
    let t = tempfile::tempdir().unwrap();
    let prefix = t.path().join("usr");
    install(&prefix);
    let zsh = fs::read_to_string(prefix.join("share/zsh/site-functions/_vrepo")).unwrap();
    assert!(zsh.starts_with("#compdef vrepo"), "{zsh}");
    let fish =
        fs::read_to_string(prefix.join("share/fish/vendor_completions.d/vrepo.fish")).unwrap();
    for sub in VREPO_SUBCOMMANDS {
        // zsh: `'save:Save the VM of ...'`; fish: `-a "save" -d '...'`.
        assert!(zsh.contains(&format!("'{sub}:")), "_vrepo lacks {sub}");
        assert!(
            fish.contains(&format!("-a \"{sub}\"")),
            "vrepo.fish lacks {sub}"
        );
    }
    for (shell, script) in [("zsh", "zsh -n"), ("fish", "fish --no-execute")] {
        // Syntax check when the shell is here; the scripts are clap_complete's, not ours.
        let mut words = script.split(' ');
        let program = words.next().unwrap();
        let file = if shell == "zsh" {
            prefix.join("share/zsh/site-functions/_vrepo")
        } else {
            prefix.join("share/fish/vendor_completions.d/vrepo.fish")
        };
        if let Ok(o) = Command::new(program).args(words).arg(&file).output() {
            assert!(
                o.status.success(),
                "{shell}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}

/// `TOOL --generate KIND` writes to stdout (the page of the tool itself for `man`); it is not in
/// `--help`, and a wrong KIND is a usage error.
#[test]
fn generate_writes_to_stdout_is_hidden_from_help_and_checks_its_kind() {
    for tool in TOOLS {
        let bin = fresh_bin(tool, tool);
        let o = run(Command::new(&bin).args(["--generate", "man"]));
        let page = String::from_utf8_lossy(&o.stdout);
        assert!(page.contains(&format!(".TH {tool} 1")), "{tool}: {page}");
        let o = run(Command::new(&bin).args(["--generate", "bash"]));
        let script = String::from_utf8_lossy(&o.stdout);
        // `complete -F _vmdk__parse ... vmdk-parse`
        assert!(
            script.contains("complete -F _") && script.contains(&format!(" {tool}\n")),
            "{tool}: {script}"
        );
        let o = run(Command::new(&bin).arg("--help"));
        let help = String::from_utf8_lossy(&o.stdout);
        assert!(!help.contains("generate"), "{tool} --help: {help}");
        let o = Command::new(&bin)
            .args(["--generate", "powershell"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{tool}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("man, bash, zsh, fish"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn makefile_recipes_are_shellcheck_clean() {
    if !available("shellcheck", "shellcheck") {
        return;
    }
    let mut text = String::from("#!/bin/sh\n");
    for target in ["install", "uninstall"] {
        text += &make(&[
            "-n",
            target,
            "PREFIX=/tmp/prefix",
            &format!("BUILD_DIR={}", build_dir().display()),
        ]);
    }
    let mut c = Command::new("shellcheck")
        .args(["-s", "sh", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("shellcheck");
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "shellcheck of the Makefile's recipes:\n{text}\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
}
