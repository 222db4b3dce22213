//! Network partitions between loopback nodes with iptables, in a chain of our own.
//!
//! [`Firewall::create`] makes a new chain `PXNEM-<pid>-<n>` and jumps to it from `OUTPUT`
//! (loopback packets traverse `OUTPUT`). Cutting the link between two nodes adds two DROP
//! rules: packets between the two nodes' IPs whose source or destination port is one of
//! their peer ports. Client traffic (other ports) is untouched, and several runs can share
//! the machine because every rule names the run's own ports.
//!
//! The chain is always removed: [`Firewall`]'s `Drop` flushes it, unhooks it from `OUTPUT`
//! and deletes it (also when the run panics or is interrupted). A chain left behind by a
//! run that was SIGKILLed is removed by the next run (its pid no longer exists).

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// One end of a peer link: a node's IP and peer port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
}

pub struct Firewall {
    chain: String,
}

const PREFIX: &str = "PXNEM-";

fn iptables(args: &[&str]) -> Result<String, String> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run iptables: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn remove_chain(chain: &str) {
    let _ = iptables(&["-F", chain]);
    while iptables(&["-D", "OUTPUT", "-j", chain]).is_ok() {}
    let _ = iptables(&["-X", chain]);
}

impl Firewall {
    /// Why partitions cannot be used here, or None if they can (root and iptables work).
    pub fn unavailable() -> Option<String> {
        match Command::new("iptables")
            .args(["-w", "-S", "OUTPUT"])
            .output()
        {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Some("iptables is not installed".into())
            }
            Err(e) => Some(format!("cannot run iptables: {e}")),
            Ok(out) if !out.status.success() => Some(format!(
                "iptables does not work here (root is needed): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Ok(_) => None,
        }
    }

    /// Creates this run's chain and hooks it into OUTPUT.
    pub fn create() -> Result<Firewall, String> {
        Self::remove_stale();
        static N: AtomicU64 = AtomicU64::new(0);
        let chain = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        remove_chain(&chain);
        iptables(&["-N", &chain])?;
        let fw = Firewall { chain };
        iptables(&["-I", "OUTPUT", "-j", &fw.chain])?;
        Ok(fw)
    }

    /// Removes chains of earlier runs whose process is gone.
    fn remove_stale() {
        let Ok(rules) = iptables(&["-S"]) else { return };
        for line in rules.lines() {
            let Some(chain) = line.strip_prefix("-N ") else {
                continue;
            };
            let Some(rest) = chain.strip_prefix(PREFIX) else {
                continue;
            };
            let pid = rest.split('-').next().unwrap_or("");
            if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                remove_chain(chain);
            }
        }
    }

    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// Drops all traffic between the peer ports of `a` and `b`, both directions.
    pub fn cut(&self, a: Endpoint, b: Endpoint) -> Result<(), String> {
        let ports = format!("{},{}", a.port, b.port);
        for (src, dst) in [(a.ip, b.ip), (b.ip, a.ip)] {
            iptables(&[
                "-A",
                &self.chain,
                "-s",
                &src.to_string(),
                "-d",
                &dst.to_string(),
                "-p",
                "tcp",
                "-m",
                "multiport",
                "--ports",
                &ports,
                "-j",
                "DROP",
            ])?;
        }
        Ok(())
    }

    /// Removes every rule of this run (heals all partitions).
    pub fn heal(&self) -> Result<(), String> {
        iptables(&["-F", &self.chain]).map(|_| ())
    }

    /// The number of rules currently in the chain.
    pub fn rules(&self) -> usize {
        iptables(&["-S", &self.chain])
            .map(|s| s.lines().filter(|l| l.starts_with("-A")).count())
            .unwrap_or(0)
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        remove_chain(&self.chain);
    }
}

/// True if `chain` exists (for tests checking the cleanup).
pub fn chain_exists(chain: &str) -> bool {
    iptables(&["-S", chain]).is_ok()
}
