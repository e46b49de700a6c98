//! Leaf helpers with no domain imports.

#[cfg(test)]
pub mod golden;
pub mod json_file;
