//! The daemon's long-running tasks, named, and what it learns when one of them ends.

/// The daemon's long-running tasks, by name.
#[derive(Default)]
pub struct Tasks {
    pub accepting: tokio::task::JoinSet<()>,
    pub service: tokio::task::JoinSet<()>,
    names: std::collections::HashMap<tokio::task::Id, &'static str>,
}

impl Tasks {
    pub fn accept(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let id = self.accepting.spawn(task).id();
        self.names.insert(id, name);
    }

    pub fn service(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let id = self.service.spawn(task).id();
        self.names.insert(id, name);
    }

    /// Resolves when any task ends (none should): what ended and how.
    pub async fn supervise(&mut self) -> String {
        let ended = tokio::select! {
            Some(ended) = self.accepting.join_next_with_id() => ended,
            Some(ended) = self.service.join_next_with_id() => ended,
            else => return std::future::pending().await,
        };
        let name = |id| self.names.get(&id).copied().unwrap_or("unnamed");
        match ended {
            Ok((id, ())) => format!("the {} task ended", name(id)),
            Err(e) if e.is_panic() => format!("the {} task panicked", name(e.id())),
            Err(e) => format!("the {} task was cancelled", name(e.id())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn supervise_names_the_task_that_ended() {
        let mut tasks = Tasks::default();
        tasks.service("control socket", std::future::pending());
        tasks.accept("IPv4 accept loop", async { panic!("poisoned lock") });
        assert_eq!(
            tasks.supervise().await,
            "the IPv4 accept loop task panicked"
        );
        tasks.service("retention", async {});
        assert_eq!(tasks.supervise().await, "the retention task ended");
    }
}
