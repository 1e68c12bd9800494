//! What WireGuard tests need beyond [`Netns::enter`]: a long-lived thread inside a namespace
//! that owns state which is not `Send` (a netlink socket, a manager whose boringtun device
//! lives as long as it does) and runs jobs on it, one at a time.

use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::Netns;

type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

/// A thread that joined a namespace and keeps a state `S` built there. Dropping it drops
/// the state on that thread (so devices shut down in their namespace) and joins it.
pub struct NsThread<S> {
    jobs: Option<mpsc::Sender<Job<S>>>,
    thread: Option<JoinHandle<()>>,
}

impl<S> std::fmt::Debug for NsThread<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NsThread").finish_non_exhaustive()
    }
}

impl<S: 'static> NsThread<S> {
    /// Starts the thread in `ns` and builds the state there with `init`.
    pub fn spawn(ns: &Netns, init: impl FnOnce() -> S + Send + 'static) -> NsThread<S> {
        let path = format!("/run/netns/{}", ns.name());
        let (tx, rx) = mpsc::channel::<Job<S>>();
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on a namespace fd we just opened; it changes only this thread's
            // network namespace, and everything this thread creates belongs there.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            let mut state = init();
            let _ = ready_tx.send(());
            for job in rx {
                job(&mut state);
            }
        });
        // A failed init panics the thread: surface it here rather than on first use.
        if ready_rx.recv().is_err() {
            let err = thread.join().expect_err("thread ended without being ready");
            std::panic::resume_unwind(err);
        }
        NsThread {
            jobs: Some(tx),
            thread: Some(thread),
        }
    }

    /// Runs `f` on the thread with the state and returns its result.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce(&mut S) -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .as_ref()
            .expect("running")
            .send(Box::new(move |s| {
                let _ = tx.send(f(s));
            }))
            .expect("namespace thread is gone (it panicked)");
        rx.recv().expect("namespace thread panicked in a job")
    }
}

impl<S> Drop for NsThread<S> {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
