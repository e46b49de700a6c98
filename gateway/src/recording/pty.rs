//! russh's terminal modes as the recording header names them.

use super::format::pty_mode_name;

/// Terminal modes as russh reports them (`pty_request`'s `modes`), by name. The
/// `TTY_OP_END` marker is dropped.
pub fn pty_modes(modes: &[(russh::Pty, u32)]) -> Vec<(String, u32)> {
    modes
        .iter()
        .filter_map(|(mode, value)| {
            pty_mode_name(*mode as u8).map(|name| (name.to_string(), *value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn russh_modes_by_name() {
        assert_eq!(
            pty_modes(&[
                (russh::Pty::ECHO, 1),
                (russh::Pty::TTY_OP_OSPEED, 38400),
                (russh::Pty::TTY_OP_END, 0)
            ]),
            vec![
                ("ECHO".to_string(), 1),
                ("TTY_OP_OSPEED".to_string(), 38400)
            ]
        );
    }
}
