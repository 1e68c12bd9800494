//! The reconciler's mailbox. It keeps only the newest pending spec, so a burst of specs costs
//! one apply; a spec pushed out of the slot before it was applied is answered `Stale` at once.
//! An eventfd wakes the reconciler's thread, which also polls kernel event sockets: one
//! `poll(2)` waits for all of them.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::oneshot;
use weft_schema::{Applicable, ApplyReply, ApplyResult, PodId};

use crate::intake::SpecMessage;

/// A valid spec (a pod's or a host's) on its way to the kernel.
#[derive(Debug)]
pub struct Submission<S> {
    pub spec: S,
    /// As received (headers and body), kept in the state directory once applied.
    pub kept: SpecMessage,
    /// The key that signed it, when signatures are checked.
    pub signed_by: Option<String>,
    pub reply: Replier,
}

impl<S: Applicable> Submission<S> {
    /// Answers the spec's request, if it was one, for the agent `id`.
    pub fn answer(self, id: &PodId, result: ApplyResult, error: String) {
        self.reply
            .send(id, self.spec.generation(), result, error, 0);
    }
}

/// Where a spec's `ApplyReply` goes (when it came as a request).
#[derive(Debug)]
pub struct Replier {
    tx: Option<oneshot::Sender<ApplyReply>>,
}

impl Replier {
    pub fn new(tx: Option<oneshot::Sender<ApplyReply>>) -> Replier {
        Replier { tx }
    }

    /// Sends the reply. `apply_micros` is the apply's own time (0 when nothing was applied).
    /// A requester that stopped waiting is not an error.
    pub fn send(
        self,
        pod: &PodId,
        generation: u64,
        result: ApplyResult,
        error: String,
        apply_micros: u64,
    ) {
        if let Some(tx) = self.tx {
            let _ = tx.send(ApplyReply {
                pod_id: pod.to_string(),
                generation,
                result,
                error,
                apply_micros,
            });
        }
    }
}

/// What the reconciler finds when it wakes.
#[derive(Debug)]
pub struct Inbox<S> {
    pub pending: Option<Submission<S>>,
    /// The newest rejection from intake (a spec that did not decode or validate).
    pub rejection: Option<String>,
    pub shutdown: bool,
    /// The emitter's tick wants a fresh read of the kernel for its snapshot.
    pub observe: bool,
}

impl<S> Default for Inbox<S> {
    fn default() -> Self {
        Inbox {
            pending: None,
            rejection: None,
            shutdown: false,
            observe: false,
        }
    }
}

impl<S: Applicable> Inbox<S> {
    /// Puts `new` in the slot; returns the spec that lost its place, if any. The higher
    /// generation wins; on a tie the newer arrival does.
    pub fn offer(&mut self, new: Submission<S>) -> Option<Submission<S>> {
        match self.pending.take() {
            None => {
                self.pending = Some(new);
                None
            }
            Some(old) if new.spec.generation() >= old.spec.generation() => {
                self.pending = Some(new);
                Some(old)
            }
            Some(old) => {
                self.pending = Some(old);
                Some(new)
            }
        }
    }
}

/// The inbox behind a lock, and the eventfd that says it changed.
#[derive(Debug)]
pub struct Mailbox<S> {
    inbox: Mutex<Inbox<S>>,
    wake: OwnedFd,
}

impl<S> Mailbox<S> {
    pub fn new() -> io::Result<Mailbox<S>> {
        // SAFETY: eventfd takes no pointers; a non-negative return is a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Mailbox {
            inbox: Mutex::new(Inbox::default()),
            // SAFETY: fd was just returned by eventfd and is owned by nobody else.
            wake: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Changes the inbox and wakes the reconciler.
    pub fn update<R>(&self, f: impl FnOnce(&mut Inbox<S>) -> R) -> R {
        let r = f(&mut self.lock());
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd. It can only fail with
        // EAGAIN when the counter is saturated, which still leaves the fd readable.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        r
    }

    /// Takes everything in the inbox and clears the wakeup.
    pub fn take(&self) -> Inbox<S> {
        let mut buf: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; EAGAIN (nothing pending) is fine.
        unsafe { libc::read(self.wake.as_raw_fd(), (&mut buf as *mut u64).cast(), 8) };
        std::mem::take(&mut *self.lock())
    }

    /// The fd that becomes readable when the inbox changes.
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    fn lock(&self) -> MutexGuard<'_, Inbox<S>> {
        // A panic while holding the lock leaves a consistent Inbox (plain assignments).
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_schema::validate::ValidSpec;

    fn sub(generation: u64) -> (Submission<ValidSpec>, oneshot::Receiver<ApplyReply>) {
        let pod = PodId::parse("p").unwrap();
        let wire = weft_schema::PodSpec {
            pod_id: "p".into(),
            generation,
            not_after_unix: None,
            network: None,
            firewall: None,
            wireguard: None,
        };
        let spec = ValidSpec::validate(&wire, &pod).unwrap();
        let (tx, rx) = oneshot::channel();
        (
            Submission {
                spec,
                kept: SpecMessage::default(),
                signed_by: None,
                reply: Replier::new(Some(tx)),
            },
            rx,
        )
    }

    #[test]
    fn the_highest_generation_keeps_the_slot() {
        let mut inbox = Inbox::default();
        assert!(inbox.offer(sub(5).0).is_none());
        assert_eq!(inbox.offer(sub(7).0).unwrap().spec.generation, 5);
        assert_eq!(inbox.offer(sub(6).0).unwrap().spec.generation, 6);
        assert_eq!(inbox.offer(sub(7).0).unwrap().spec.generation, 7);
        assert_eq!(inbox.pending.as_ref().unwrap().spec.generation, 7);
    }

    #[test]
    fn the_wakeup_fd_is_readable_until_taken() {
        let mb = Mailbox::new().unwrap();
        let (s, mut rx) = sub(1);
        mb.update(|i| i.offer(s));
        let mut pfd = libc::pollfd {
            fd: mb.wake_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 0) }, 1);
        let inbox = mb.take();
        // SAFETY: as above.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 0) }, 0);
        inbox.pending.unwrap().answer(
            &PodId::parse("p").unwrap(),
            ApplyResult::Applied,
            String::new(),
        );
        assert_eq!(rx.try_recv().unwrap().result, ApplyResult::Applied);
    }
}
