//! Running the README's command blocks as written: a block marked
//! `<!-- readme-test: NAME -->` is a `console` block (`$ command` lines, each followed by
//! what it prints) or a plain block of commands; [`block`] reads it, [`shell`] runs a
//! command as a new user's terminal would, and [`lines_match`] compares what it printed
//! with what the README shows, where `...` alone is any number of lines and `...` inside
//! a line any text (what differs from run to run). `redis-cli` decorates replies only on
//! a terminal; [`piped_redis`] turns the README's terminal form into what it prints into
//! a pipe.

use super::BIN;
use std::path::Path;
use std::process::Command;

/// A command block of the README: its commands, each with the output shown after it.
pub fn block(readme: &str, name: &str) -> Vec<(String, Vec<String>)> {
    let marker = format!("<!-- readme-test: {name} -->");
    let at = readme
        .find(&marker)
        .unwrap_or_else(|| panic!("README has no {marker}"));
    let mut lines = readme[at + marker.len()..]
        .lines()
        .skip_while(|l| l.is_empty());
    let fence = lines.next().expect("a code block after the marker");
    assert!(
        fence.starts_with("```"),
        "{marker} is not followed by a code block"
    );
    let console = fence == "```console";
    let mut cmds: Vec<(String, Vec<String>)> = Vec::new();
    for l in lines.take_while(|l| !l.starts_with("```")) {
        match (console, l.strip_prefix("$ ")) {
            (_, Some(cmd)) => cmds.push((cmd.to_string(), vec![])),
            (false, None) => cmds.push((l.to_string(), vec![])),
            (true, None) => cmds
                .last_mut()
                .expect("output before the first command")
                .1
                .push(l.trim_end().to_string()),
        }
    }
    assert!(!cmds.is_empty(), "{marker}: no command");
    cmds
}

/// The line `redis-cli` prints into a pipe for `line`, a reply as a terminal shows it:
/// `1) "ada"` is `ada`, `(integer) 1` is `1`, `(nil)` an empty line, `(error) ERR x` is
/// `ERR x`.
pub fn piped_redis(line: &str) -> String {
    let l = line.trim_start();
    let l = match l.split_once(") ") {
        Some((n, rest)) if !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) => rest,
        _ => l,
    };
    let l = l.strip_prefix("(integer) ").unwrap_or(l);
    let l = l.strip_prefix("(error) ").unwrap_or(l);
    if l == "(nil)" {
        return String::new();
    }
    l.strip_prefix('"')
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or(l)
        .to_string()
}

/// Whether `got` matches `want`, in which `...` stands for any text.
pub fn line_matches(want: &str, got: &str) -> bool {
    let parts: Vec<&str> = want.split("...").collect();
    if parts.len() == 1 {
        return want == got;
    }
    let Some(mut rest) = got.strip_prefix(parts[0]) else {
        return false;
    };
    let last = parts.len() - 1;
    for p in &parts[1..last] {
        match rest.find(p) {
            Some(at) => rest = &rest[at + p.len()..],
            None => return false,
        }
    }
    rest.ends_with(parts[last])
}

/// Whether the lines `got` match `want`, where a line `...` stands for any lines.
pub fn lines_match(want: &[String], got: &[String]) -> bool {
    match want.split_first() {
        None => got.is_empty(),
        Some((w, rest)) if w == "..." => (0..=got.len()).any(|i| lines_match(rest, &got[i..])),
        Some((w, rest)) => {
            !got.is_empty() && line_matches(w, &got[0]) && lines_match(rest, &got[1..])
        }
    }
}

/// A shell in `dir` with the test binary first on PATH and no paxosdb or redis-cli
/// settings from the environment: what a new user's terminal has.
pub fn shell(dir: &Path, cmd: &str) -> Command {
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut sh = Command::new("sh");
    sh.args(["-c", cmd])
        .current_dir(dir)
        .env("PATH", path)
        .env("HOME", dir)
        .env_remove("REDISCLI_AUTH")
        .env_remove("XDG_CONFIG_HOME");
    for (k, _) in std::env::vars() {
        if k.starts_with("PAXOSDB_") {
            sh.env_remove(k);
        }
    }
    sh
}
