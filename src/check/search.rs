//! The per-key search for a linearization (see the module docs of `check`).

use super::{step, Operation, Outcome, Verdict};

/// Checks the operations of one key, starting from `initial`.
pub fn check_key(ops: &[Operation], initial: Option<Vec<u8>>, budget: u64) -> Verdict {
    let _ = (ops, initial, budget);
    todo!("implemented next")
}

#[allow(dead_code)]
fn unused(_: Outcome) -> Option<Option<Vec<u8>>> {
    step(&None, &super::Input::Get, None)
}
