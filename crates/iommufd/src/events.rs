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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventq::fakes::{pipe, record};
    use event_manager::{EventManager, SubscriberOps};
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn subscribers_hand_over_what_they_read() {
        let fd = crate::iommufd::tests::null();
        let dev = crate::nested::tests::device(&fd, 3, 0x33);
        let (r, mut w) = pipe();
        let q = FaultQueue::fake(&fd, 9, r);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let sub = FaultSubscriber::new(q.clone(), move |queue, g| {
            s.lock().unwrap().push((g.cookie, g.label));
            // The handler gets the queue to answer on (here a pipe: it fails).
            assert!(
                queue
                    .respond(g.cookie, crate::PageResponse::Success)
                    .is_err()
            );
        });
        assert!(format!("{sub:?}").contains("fault queue 9"));
        assert_eq!(sub.queue().id(), q.id());
        let mut m = EventManager::<Box<dyn MutEventSubscriber + Send>>::new().unwrap();
        m.add_subscriber(Box::new(sub));
        assert_eq!(m.run_with_timeout(10).unwrap(), 0, "nothing to read yet");
        w.write_all(&record(2, 3, 0, 0x1000, 7)).unwrap();
        w.write_all(&record(2, 3, 0, 0x2000, 8)).unwrap();
        assert_eq!(m.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(*seen.lock().unwrap(), [(7, Some(0x33)), (8, Some(0x33))]);
        // Garbage is logged, the subscriber stays; a hang-up unregisters it.
        w.write_all(&[0xff; 40]).unwrap();
        assert_eq!(m.run_with_timeout(1000).unwrap(), 1);
        drop(w);
        assert_eq!(m.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(
            m.run_with_timeout(10).unwrap(),
            0,
            "unregistered after the hang-up"
        );
        drop(dev);
        let _ = q.into_id();
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn vevent_subscriber_skips_empty_reads() {
        let fd = crate::iommufd::tests::null();
        let ioas = crate::Ioas::fake(&fd, 1);
        let parent = crate::Hwpt::fake_with_flags(&ioas, 2, crate::HwptFlags::NEST_PARENT);
        let viommu = crate::Viommu::fake(&parent, 3, crate::ViommuType::Tegra241Cmdqv);
        let (r, mut w) = pipe();
        let q = Veventq::fake(&viommu, 6, crate::VeventqType::Tegra241Cmdqv, r);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let sub = VeventSubscriber::new(q.clone(), move |b| s.lock().unwrap().push(b));
        assert!(format!("{sub:?}").contains("veventq 6"));
        assert_eq!(sub.queue().id(), q.id());
        let mut m = EventManager::<Box<dyn MutEventSubscriber + Send>>::new().unwrap();
        m.add_subscriber(Box::new(sub));
        // A LOST_EVENTS record alone is handed over: events were lost.
        w.write_all(&1u32.to_ne_bytes()).unwrap();
        w.write_all(&1u32.to_ne_bytes()).unwrap();
        assert_eq!(m.run_with_timeout(1000).unwrap(), 1);
        let b = seen.lock().unwrap();
        assert_eq!((b.len(), b[0].lost, b[0].events.len()), (1, 2, 0));
        drop(b);
        let _ = (
            q.into_id(),
            viommu.into_id(),
            parent.into_id(),
            ioas.into_id(),
        );
    }
}
