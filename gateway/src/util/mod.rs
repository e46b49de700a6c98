//! Leaf helpers with no domain imports.

pub mod fs;
pub mod json_file;
