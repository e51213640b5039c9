//! [event-manager](https://docs.rs/event-manager) subscribers for the event
//! queues (feature `event-manager`): a VMM registers a fault queue or a vEVENTQ in
//! the rust-vmm event loop it already runs, and gets typed records.
//!
//! Each subscriber owns its queue (a shared handle) and a handler closure. When
//! the queue's file is readable it reads everything delivered (never blocking) and
//! hands it over; a read error goes to the `log` crate and the subscriber stays
//! registered, and if the file reports an error or hang-up it unregisters itself.
//!
//! ```no_run
//! use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
//! use iommufd::events::{FaultSubscriber, VeventSubscriber};
//! use iommufd::{FaultQueue, PageResponse, Veventq};
//! use std::sync::{Arc, Mutex};
//! # fn f(faults: FaultQueue, events: Veventq) -> Result<(), Box<dyn std::error::Error>> {
//! let mut manager = EventManager::<Box<dyn MutEventSubscriber + Send>>::new()?;
//! manager.add_subscriber(Box::new(FaultSubscriber::new(faults, |queue, group| {
//!     // Map the pages (or inject the fault into the guest), then answer.
//!     let _ = queue.respond(group.cookie, PageResponse::Success);
//! })));
//! manager.add_subscriber(Box::new(VeventSubscriber::new(events, |batch| {
//!     println!("{} events, {} lost", batch.events.len(), batch.lost);
//! })));
//! loop {
//!     manager.run()?;
//! }
//! # }
//! ```

use std::fmt;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use crate::{FaultGroup, FaultQueue, VeventBatch, Veventq};

/// Registers `fd`'s readability, logging a failure (the trait has no error path).
fn register(ops: &mut EventOps, events: Events, what: &dyn fmt::Display) {
    if let Err(e) = ops.add(events) {
        log::error!("iommufd: registering {what} with the event manager: {e}");
    }
}

/// Whether the event says the file is done for (error or hang-up); it is then
/// unregistered.
fn finished(ops: &mut EventOps, events: &Events, what: &dyn fmt::Display) -> bool {
    let set = events.event_set();
    if set.intersects(EventSet::ERROR | EventSet::HANG_UP) {
        log::warn!("iommufd: {what} reports {set:?}; unregistering it");
        let _ = ops.remove(*events);
        return true;
    }
    false
}

/// A fault queue in an event loop: calls `handler(queue, group)` for each page
/// request group as it arrives. The handler answers groups with
/// [`FaultQueue::respond`] (now or later; the device waits until then).
pub struct FaultSubscriber<H> {
    queue: FaultQueue,
    handler: H,
}

impl<H> fmt::Debug for FaultSubscriber<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultSubscriber")
            .field("queue", &self.queue.id())
            .finish_non_exhaustive()
    }
}

impl<H: FnMut(&FaultQueue, FaultGroup)> FaultSubscriber<H> {
    /// A subscriber for `queue` that hands each group to `handler`.
    pub fn new(queue: FaultQueue, handler: H) -> Self {
        FaultSubscriber { queue, handler }
    }

    /// The queue.
    pub fn queue(&self) -> &FaultQueue {
        &self.queue
    }
}

impl<H: FnMut(&FaultQueue, FaultGroup)> MutEventSubscriber for FaultSubscriber<H> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if finished(ops, &events, &self.queue.id()) {
            return;
        }
        match self.queue.read() {
            Ok(groups) => {
                for g in groups {
                    (self.handler)(&self.queue, g);
                }
            }
            Err(e) => log::error!("iommufd: {e}"),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        register(
            ops,
            Events::new(&self.queue, EventSet::IN),
            &self.queue.id(),
        );
    }
}

/// A vEVENTQ in an event loop: calls `handler(batch)` with what each read
/// returns (events, and how many were lost).
pub struct VeventSubscriber<H> {
    queue: Veventq,
    handler: H,
}

impl<H> fmt::Debug for VeventSubscriber<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VeventSubscriber")
            .field("queue", &self.queue.id())
            .finish_non_exhaustive()
    }
}

impl<H: FnMut(VeventBatch)> VeventSubscriber<H> {
    /// A subscriber for `queue` that hands each batch to `handler`.
    pub fn new(queue: Veventq, handler: H) -> Self {
        VeventSubscriber { queue, handler }
    }

    /// The queue.
    pub fn queue(&self) -> &Veventq {
        &self.queue
    }
}

impl<H: FnMut(VeventBatch)> MutEventSubscriber for VeventSubscriber<H> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if finished(ops, &events, &self.queue.id()) {
            return;
        }
        match self.queue.read() {
            Ok(batch) if batch.events.is_empty() && batch.lost == 0 => {}
            Ok(batch) => (self.handler)(batch),
            Err(e) => log::error!("iommufd: {e}"),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        register(
            ops,
            Events::new(&self.queue, EventSet::IN),
            &self.queue.id(),
        );
    }
}
