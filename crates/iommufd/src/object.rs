//! The object core, written once for every kind of kernel object: a shared handle
//! that owns its file and its parents, destroys the object when the last handle
//! goes, and can destroy it explicitly or leak it on purpose.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::ids::kind::Kind;
use crate::{Error, Id, Iommufd, Refused};

pub(crate) mod sealed {
    /// What an object of a kind keeps beside its id. Sealed: implemented by the
    /// crate's kinds only.
    pub trait ObjectState {
        /// The per-kind state (the mapping registry of an IOAS, the flags of a
        /// HWPT, ...).
        type State: Send + Sync + std::fmt::Debug + 'static;

        /// Runs just before the object is destroyed (on drop or by `destroy`):
        /// what must go first, such as the queue file that holds a reference to
        /// the object in the kernel.
        fn before_destroy(_state: &Self::State) {}
    }
}

/// A kind of kernel object destroyed with `IOMMU_DESTROY`: the type parameter of
/// [`Object`]. Sealed.
pub trait ObjectKind: Kind + sealed::ObjectState {}

impl<K: Kind + sealed::ObjectState> ObjectKind for K {}

/// What an object holds of its parents: enough to keep them alive, and to name them
/// when a child is leaked.
pub(crate) trait Parent: Send + Sync {
    /// Appends the raw ids of this object and its ancestors, nearest first.
    fn ancestry(&self, out: &mut Vec<u32>);
}

/// The kind-independent part of an object.
struct Core {
    fd: Iommufd,
    id: u32,
    name: &'static str,
    /// Cleared when the object is destroyed or leaked: its drop then sends nothing.
    live: AtomicBool,
    /// Released after the object is destroyed (fields drop after `Drop::drop`).
    parents: Vec<Arc<dyn Parent>>,
}

impl Core {
    fn ancestry(&self, out: &mut Vec<u32>) {
        for p in &self.parents {
            p.ancestry(out);
        }
    }

    fn describe(&self) -> String {
        format!("{} {}", self.name, self.id)
    }
}

struct Node<K: ObjectKind> {
    core: Core,
    state: K::State,
}

impl<K: ObjectKind> Drop for Node<K> {
    fn drop(&mut self) {
        let core = &self.core;
        // An ancestor of a leaked object stays (the kernel would refuse with EBUSY)
        // until that object is destroyed by id.
        if core.live.load(Ordering::Acquire) && !core.fd.leaks().keep(core.id) {
            K::before_destroy(&self.state);
            if let Err(e) = core.fd.destroy_id(core.id, core.describe()) {
                log::error!(
                    "iommufd: dropping {}: {e}; it stays until the file is closed",
                    core.describe()
                );
            }
        }
        // Then the parents (in `core`) and the state are released.
    }
}

impl<K: ObjectKind> Parent for Node<K> {
    fn ancestry(&self, out: &mut Vec<u32>) {
        out.push(self.core.id);
        self.core.ancestry(out);
    }
}

/// A kernel object of kind `K` in one `/dev/iommu` file: [`Ioas`](crate::Ioas),
/// [`Hwpt`](crate::Hwpt), and (with the `selftest` feature) the kernel's mock
/// devices.
///
/// An `Object` is a shared handle: cloning it is cheap, and the kernel object is
/// destroyed (`IOMMU_DESTROY`) when the last handle is dropped. Everything that
/// depends on an object holds a handle to it: a HWPT its IOAS, a device the IOAS or
/// HWPT it is attached to, a [`Mapping`](crate::Mapping) its IOAS. So whatever order
/// a program drops things in, an object is destroyed only after everything that
/// depends on it, and every object holds its [`Iommufd`], so the file stays open as
/// long as any object of it lives. Objects are `'static` and `Send + Sync`: a VMM
/// keeps them in its device manager, shares them across threads, and drops them
/// whenever it likes.
///
/// [`Object::destroy`] destroys at once and says why it cannot;
/// [`Object::into_id`] leaks the object on purpose.
///
/// ```no_run
/// use iommufd::{Ioas, Iommufd};
/// let fd = Iommufd::open()?;
/// let ioas = Ioas::alloc(&fd)?;
/// let shared = ioas.clone(); // e.g. for another device model
/// assert_eq!(shared.id(), ioas.id());
/// drop(ioas); // still alive: `shared` holds it
/// shared.destroy()?; // the last handle: IOMMU_DESTROY now, errors returned
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Object<K: ObjectKind> {
    node: Arc<Node<K>>,
}

impl<K: ObjectKind> Clone for Object<K> {
    fn clone(&self) -> Self {
        Object {
            node: Arc::clone(&self.node),
        }
    }
}

impl<K: ObjectKind> fmt::Debug for Object<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Object")
            .field("id", &self.id())
            .field("iommufd", &self.node.core.fd)
            .field("state", &self.node.state)
            .finish()
    }
}

impl<K: ObjectKind> Object<K> {
    /// Takes ownership of the object `id` that the kernel just created in `fd`,
    /// holding `parents` until it is destroyed.
    pub(crate) fn from_parts(
        fd: &Iommufd,
        id: u32,
        parents: Vec<Arc<dyn Parent>>,
        state: K::State,
    ) -> Self {
        Object {
            node: Arc::new(Node {
                core: Core {
                    fd: fd.clone(),
                    id,
                    name: K::NAME,
                    live: AtomicBool::new(true),
                    parents,
                },
                state,
            }),
        }
    }

    /// The object as a parent of another.
    pub(crate) fn as_parent(&self) -> Arc<dyn Parent> {
        self.node.clone()
    }

    pub(crate) fn state(&self) -> &K::State {
        &self.node.state
    }

    /// The id, for messages, comparisons with ids in kernel records, and other layers.
    ///
    /// ```no_run
    /// # let fd = iommufd::Iommufd::open()?;
    /// let ioas = iommufd::Ioas::alloc(&fd)?;
    /// println!("allocated {}", ioas.id()); // "allocated ioas 1"
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn id(&self) -> Id<K> {
        Id::new(self.node.core.id, self.node.core.fd.token())
    }

    /// The file the object belongs to.
    ///
    /// ```no_run
    /// # let fd = iommufd::Iommufd::open()?;
    /// let ioas = iommufd::Ioas::alloc(&fd)?;
    /// assert!(ioas.iommufd().same_file(&fd));
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn iommufd(&self) -> &Iommufd {
        &self.node.core.fd
    }

    /// Fails with [`Error::WrongIommufd`] unless the object belongs to `fd`.
    pub(crate) fn check_file(&self, fd: &Iommufd, op: &'static str) -> crate::Result<()> {
        fd.check_owner(op, self.node.core.fd.token(), self.id())
    }

    /// Destroys the object now (`IOMMU_DESTROY`), returning why it could not be
    /// destroyed instead of logging it.
    ///
    /// Without calling the kernel, fails with [`Error::InUse`] while other handles
    /// hold the object: clones, objects built on it (HWPTs of an IOAS), devices
    /// attached to it, mappings in it. If the kernel refuses (a dependency the crate
    /// does not know of, made by another layer), its error is returned. Either way
    /// the object comes back in the [`Refused`] error, unchanged, to retry or keep.
    ///
    /// ```no_run
    /// use iommufd::{Error, Ioas, Iommufd};
    /// let fd = Iommufd::open()?;
    /// let ioas = Ioas::alloc(&fd)?;
    /// let other = ioas.clone();
    /// let refused = ioas.destroy().unwrap_err();
    /// assert!(matches!(refused.error, Error::InUse { .. }));
    /// let ioas = refused.object; // still usable
    /// drop(other);
    /// ioas.destroy()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn destroy(self) -> Result<(), Refused<Self>> {
        let node = match Arc::try_unwrap(self.node) {
            Ok(node) => node,
            Err(node) => {
                let others = Arc::strong_count(&node).saturating_sub(1);
                let object = Object { node };
                return Err(Refused {
                    error: Error::InUse {
                        op: "IOMMU_DESTROY",
                        object: object.node.core.describe(),
                        others,
                    },
                    object,
                });
            }
        };
        K::before_destroy(&node.state);
        match node.core.fd.destroy_id(node.core.id, node.core.describe()) {
            Ok(()) => {
                node.core.live.store(false, Ordering::Release);
                node.core.fd.destroyed(node.core.id);
                Ok(())
            }
            Err(error) => Err(Refused {
                error,
                object: Object {
                    node: Arc::new(node),
                },
            }),
        }
    }

    /// Leaks the object on purpose and returns its id: it stays in the kernel until
    /// [`Iommufd::destroy_raw`] of that id or until the file is closed. Other handles
    /// of the object stay usable; dropping them no longer destroys it.
    ///
    /// Its ancestors (the IOAS of a HWPT) must outlive it in the kernel: dropping
    /// their handles does not destroy them while it is leaked, and
    /// [`Iommufd::destroy_raw`] of it destroys those whose handles are gone by then.
    ///
    /// ```no_run
    /// use iommufd::{Hwpt, HwptFlags, Ioas, Iommufd};
    /// # fn f(dev: &iommufd::Device) -> iommufd::Result<()> {
    /// let fd = dev.iommufd().clone();
    /// let ioas = Ioas::alloc(&fd)?;
    /// let id = Hwpt::alloc(&ioas, dev, HwptFlags::empty())?.into_id(); // e.g. for another layer
    /// drop(ioas); // stays: the leaked HWPT needs it
    /// fd.destroy_raw(id.raw())?; // the HWPT, then the IOAS no handle holds any more
    /// # Ok(()) }
    /// ```
    pub fn into_id(self) -> Id<K> {
        let core = &self.node.core;
        if core.live.swap(false, Ordering::AcqRel) {
            let mut ancestors = Vec::new();
            core.ancestry(&mut ancestors);
            core.fd.leaks().pin(core.id, ancestors);
        }
        self.id()
    }

    /// How many handles share this object, this one included: clones, objects built
    /// on it, devices attached to it and mappings in it each hold one. The object is
    /// destroyed when the count drops to zero.
    ///
    /// ```no_run
    /// # let fd = iommufd::Iommufd::open()?;
    /// let ioas = iommufd::Ioas::alloc(&fd)?;
    /// assert_eq!(ioas.handles(), 1);
    /// let copy = ioas.clone();
    /// assert_eq!(ioas.handles(), 2);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iommufd::tests::null;
    use crate::{Hwpt, Ioas};

    // /dev/null answers DESTROY with ENOTTY: the paths are exercised, the kernel
    // refuses everything.
    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn destroy_gives_the_object_back() {
        let fd = null();
        let ioas = Ioas::fake(&fd, 7);
        let clone = ioas.clone();
        assert_eq!(ioas.handles(), 2);
        let r = ioas.destroy().unwrap_err();
        assert!(
            matches!(r.error, Error::InUse { others: 1, .. }),
            "{}",
            r.error
        );
        assert!(r.to_string().contains("ioas 7"), "{r}");
        drop(clone);
        let ioas = r.object;
        let r = ioas.destroy().unwrap_err();
        assert!(r.error.is_unsupported(), "{}", r.error);
        // Leaking it stops the drop from trying again.
        let id = r.object.into_id();
        assert_eq!(id.raw(), 7);
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn leaking_a_child_keeps_its_ancestors() {
        let fd = null();
        let ioas = Ioas::fake(&fd, 1);
        let hwpt = Hwpt::fake(&ioas, 2);
        assert_eq!(hwpt.into_id().raw(), 2);
        assert!(format!("{ioas:?}").contains("ioas 1"));
        // The IOAS handle goes, the kernel object must stay: it becomes an orphan,
        // to be destroyed with its leaked child.
        drop(ioas);
        assert_eq!(fd.leaks().release(2), vec![1]);
        assert!(fd.leaks().release(2).is_empty());
    }
}
