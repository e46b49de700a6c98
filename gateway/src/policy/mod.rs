//! What a connecting user may do: the policy set's schema and its evaluation.

pub mod eval;
pub mod model;
pub mod network;
