//! Tests of the session rule.
