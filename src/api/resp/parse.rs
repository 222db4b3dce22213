//! A cursor over a request's arguments, with the error replies Redis gives for missing,
//! extra or malformed ones.

use super::frame::Frame;
use std::vec::IntoIter;

/// An error reply produced while parsing or running a command.
pub type Reply = Frame;

/// `-ERR syntax error`
pub fn syntax_error() -> Reply {
    Frame::error("ERR syntax error")
}

/// `-ERR value is not an integer or out of range`
pub fn not_integer() -> Reply {
    Frame::error("ERR value is not an integer or out of range")
}

/// `-ERR wrong number of arguments for 'get' command`
pub fn wrong_arity(name: &str) -> Reply {
    Frame::error(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

/// The arguments after the command name, consumed front to back.
pub struct Args {
    /// The command name, lower-case (for error messages).
    pub name: String,
    args: IntoIter<Vec<u8>>,
}

impl Args {
    pub fn new(name: &str, args: Vec<Vec<u8>>) -> Args {
        Args {
            name: name.to_ascii_lowercase(),
            args: args.into_iter(),
        }
    }

    pub fn remaining(&self) -> usize {
        self.args.len()
    }

    /// The next argument; its absence is a wrong number of arguments.
    pub fn bytes(&mut self) -> Result<Vec<u8>, Reply> {
        self.args.next().ok_or_else(|| wrong_arity(&self.name))
    }

    /// The next argument, upper-cased, for keywords such as `NX` or `MATCH`.
    pub fn keyword(&mut self) -> Result<String, Reply> {
        Ok(String::from_utf8_lossy(&self.bytes()?).to_ascii_uppercase())
    }

    /// The next argument as a decimal i64.
    pub fn int(&mut self) -> Result<i64, Reply> {
        let b = self.bytes()?;
        std::str::from_utf8(&b)
            .ok()
            .filter(|s| !s.starts_with('+') && !s.is_empty())
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(not_integer)
    }

    /// Every argument left.
    pub fn rest(&mut self) -> Vec<Vec<u8>> {
        self.args.by_ref().collect()
    }

    /// Succeeds only if every argument was used.
    pub fn finish(self) -> Result<(), Reply> {
        if self.args.len() == 0 {
            Ok(())
        } else {
            Err(syntax_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Args {
        Args::new("CMD", v.iter().map(|s| s.as_bytes().to_vec()).collect())
    }

    #[test]
    fn cursor() {
        let mut a = args(&["k", "nx", "12", "-3"]);
        assert_eq!(a.remaining(), 4);
        assert_eq!(a.bytes().unwrap(), b"k");
        assert_eq!(a.keyword().unwrap(), "NX");
        assert_eq!(a.int().unwrap(), 12);
        assert_eq!(a.int().unwrap(), -3);
        assert_eq!(
            a.bytes().unwrap_err(),
            Frame::error("ERR wrong number of arguments for 'cmd' command")
        );
        a.finish().unwrap();
    }

    #[test]
    fn bad_integers_and_leftovers() {
        for bad in ["x", "", "+1", "1.5", "99999999999999999999", " 1"] {
            assert_eq!(args(&[bad]).int().unwrap_err(), not_integer(), "{bad:?}");
        }
        let mut a = args(&["a", "b"]);
        a.bytes().unwrap();
        assert_eq!(a.finish().unwrap_err(), syntax_error());
    }
}
