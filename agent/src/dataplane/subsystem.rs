//! The one shape every kernel subsystem has: read what the kernel holds, plan the
//! difference (pure), send only that, and say how things stand (pure, from a read).
//!
//! Plans and statuses are values that tests compare without root; `read` and `send` are the
//! thin halves over the sockets. An apply that finds everything right sends nothing.

use super::rtnl::Rtnl;

pub trait Subsystem {
    /// What the spec asks of the subsystem.
    type Desired: ?Sized;
    /// What the kernel holds, as far as the plan needs.
    type State;
    /// The changes that take the kernel from `State` to `Desired`; empty when there are none.
    /// It may borrow from the desired state and the read.
    type Plan<'a>;
    type Error: std::error::Error + Send + Sync + 'static;
    /// How things stand, in the contract's terms.
    type Status;

    /// Reads the kernel. `rtnl` is the namespace's rtnetlink socket, for those that need it;
    /// sockets a subsystem owns alone (the firewall's table owner) are its own.
    fn read(
        &mut self,
        rtnl: &mut Rtnl,
        desired: &Self::Desired,
    ) -> Result<Self::State, Self::Error>;

    /// The changes, in the order they must be made (pure).
    fn plan<'a>(&self, desired: &'a Self::Desired, state: &'a Self::State) -> Self::Plan<'a>;

    /// Makes the changes of `plan`, nothing else (nothing at all for an empty plan).
    fn send(
        &mut self,
        rtnl: &mut Rtnl,
        desired: &Self::Desired,
        state: &Self::State,
        plan: Self::Plan<'_>,
    ) -> Result<(), Self::Error>;

    /// The status of a read compared with the desired state (pure). A failed read is a
    /// status too: degraded, naming what could not be read.
    fn status(
        &self,
        desired: &Self::Desired,
        read: Result<&Self::State, &Self::Error>,
    ) -> Self::Status;

    /// Read, plan, send.
    fn apply(&mut self, rtnl: &mut Rtnl, desired: &Self::Desired) -> Result<(), Self::Error> {
        let state = self.read(rtnl, desired)?;
        let plan = self.plan(desired, &state);
        self.send(rtnl, desired, &state, plan)
    }

    /// Read, then status. Never fails: errors are part of the status.
    fn observe(&mut self, rtnl: &mut Rtnl, desired: &Self::Desired) -> Self::Status {
        let read = self.read(rtnl, desired);
        self.status(desired, read.as_ref())
    }
}
