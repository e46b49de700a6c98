//! From an intercepted SYN to a judged connection: the transparent listeners that accept
//! what the datapath steers to them, and admission (identity, interface pin, policy).

pub mod admission;
#[cfg(test)]
mod admission_tests;
pub mod listener;
