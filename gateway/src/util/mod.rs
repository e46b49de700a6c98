//! Leaf helpers with no domain imports.

pub mod duration;
pub mod fs;
pub mod json_file;
