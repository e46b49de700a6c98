//! Leaf helpers with no domain imports.

pub mod duration;
pub mod fs;
#[cfg(test)]
pub mod golden;
pub mod json_file;
pub mod vocabulary;
