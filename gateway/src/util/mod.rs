//! Leaf helpers with no domain imports.

pub mod json_file;
