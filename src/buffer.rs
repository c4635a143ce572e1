//! Memory for large streams of elements: cache-line aligned, and in transparent huge pages
//! when large.
//!
//! A step of a large tensor streams its parameter, gradient and state through memory once,
//! and on 4 KiB pages its speed depends on where the streams sit: a `Vec`'s data starts a few
//! bytes into a page, and the same loop over the same sizes ran at 1.0 or 1.7 ns per element
//! depending only on the buffers' virtual addresses (AMD EPYC, AVX2). Backed by 2 MiB pages
//! the placement stops mattering and the step runs at the fast end. So buffers of at least
//! [`HUGE_PAGE`] bytes get an anonymous memory map of their own, starting on a 2 MiB
//! boundary, with the kernel asked for transparent huge pages (`madvise(MADV_HUGEPAGE)`,
//! Linux); smaller ones, and large ones where a map or the advice is refused, live in an
//! ordinary allocation whose first element sits on a 64-byte cache line. Nothing here is
//! visible in the values: only where they sit.

use core::fmt;
use core::ops::{Deref, DerefMut};

/// The size of a transparent huge page on x86-64 and most AArch64 kernels: buffers of at
/// least this many bytes are mapped on their own, aligned to it.
pub const HUGE_PAGE: usize = 2 << 20;

/// The alignment of every buffer's first element, a cache line.
const CACHE_LINE: usize = 64;

/// A fixed-length run of elements aligned for streaming, as the optimizer keeps its state:
/// the first element on a 64-byte cache line, and, from [`HUGE_PAGE`] bytes on, on a 2 MiB
/// boundary of a memory map backed by transparent huge pages where the system offers them.
///
/// It dereferences to a slice, so it serves as the storage of a parameter or a gradient
/// too: a view of it as an array places that tensor as the optimizer's own state is placed.
///
/// ```
/// use ndarray::ArrayViewMut2;
/// use ndarray_optim::AlignedBuffer;
///
/// let mut storage = AlignedBuffer::<f32>::filled(1024 * 1024, 0.0);
/// assert!((storage.as_ptr() as usize).is_multiple_of(64));
/// let mut weights = ArrayViewMut2::from_shape((1024, 1024), &mut storage[..]).unwrap();
/// weights[[3, 4]] = 1.5;
/// assert_eq!(storage[3 * 1024 + 4], 1.5);
/// ```
pub struct AlignedBuffer<A> {
    storage: Storage<A>,
}

enum Storage<A> {
    /// A `Vec` with room to start `len` elements on a cache line, `offset` elements in.
    Heap { values: Vec<A>, offset: usize, len: usize },
    /// An anonymous map, the elements `offset` bytes in, seen as elements through `view`
    /// and `view_mut` (taken where the element type is known to be plain data).
    Map { map: memmap2::MmapMut, offset: usize, len: usize, casts: Casts<A> },
}

/// The views of bytes as elements, for a plain-data element type.
struct Casts<A> {
    view: fn(&[u8]) -> &[A],
    view_mut: fn(&mut [u8]) -> &mut [A],
}

impl<A> Clone for Casts<A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A> Copy for Casts<A> {}

impl<A> AlignedBuffer<A> {
    /// An empty buffer, allocating nothing.
    pub fn new() -> Self {
        AlignedBuffer { storage: Storage::Heap { values: Vec::new(), offset: 0, len: 0 } }
    }

    /// Whether the buffer sits in a memory map of its own (large, 2 MiB aligned, with
    /// huge pages requested) rather than in an ordinary allocation.
    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Map { .. })
    }
}

impl<A: bytemuck::Pod> AlignedBuffer<A> {
    /// `len` elements, each `value`.
    pub fn filled(len: usize, value: A) -> Self {
        let casts = Casts { view: bytemuck::cast_slice, view_mut: bytemuck::cast_slice_mut };
        let mut buffer = Self::placed(len, value, Some(casts));
        if buffer.is_mapped() {
            // A map comes zeroed; a `Vec` was made of `value`s.
            buffer.fill(value);
        }
        buffer
    }

    /// A copy of `values`.
    pub fn from_slice(values: &[A]) -> Self {
        let mut buffer = Self::filled(values.len(), A::zeroed());
        buffer.copy_from_slice(values);
        buffer
    }
}

impl<A: Clone> AlignedBuffer<A> {
    /// Room for `len` elements: a map where `casts` is given and the buffer is large enough,
    /// else a `Vec` of `fill`s.
    fn placed(len: usize, fill: A, casts: Option<Casts<A>>) -> Self {
        let bytes = len.saturating_mul(size_of::<A>());
        if bytes >= HUGE_PAGE
            && let Some(storage) = casts.and_then(|casts| Storage::map(len, casts))
        {
            return AlignedBuffer { storage };
        }
        let spare = CACHE_LINE / size_of::<A>();
        let values = vec![fill; len + spare];
        let offset = line_offset(&values);
        AlignedBuffer { storage: Storage::Heap { values, offset, len } }
    }
}

/// How many elements into `values` the first cache line starts. An allocation of `f32` or
/// `f64` is aligned to its element, so the gap is a whole number of elements.
fn line_offset<A>(values: &[A]) -> usize {
    let start = values.as_ptr() as usize;
    (start.next_multiple_of(CACHE_LINE) - start) / size_of::<A>().max(1)
}

impl<A> Storage<A> {
    /// A map of `len` elements on a 2 MiB boundary with huge pages requested, or `None`
    /// where the system refuses either.
    fn map(len: usize, casts: Casts<A>) -> Option<Self> {
        let bytes = len.checked_mul(size_of::<A>())?;
        let map = memmap2::MmapMut::map_anon(bytes.checked_add(HUGE_PAGE)?).ok()?;
        let start = map.as_ptr() as usize;
        let offset = start.next_multiple_of(HUGE_PAGE) - start;
        #[cfg(target_os = "linux")]
        map.advise_range(memmap2::Advice::HugePage, offset, bytes).ok()?;
        Some(Storage::Map { map, offset, len, casts })
    }
}

impl<A> Default for AlignedBuffer<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A> Deref for AlignedBuffer<A> {
    type Target = [A];

    fn deref(&self) -> &[A] {
        match &self.storage {
            Storage::Heap { values, offset, len } => &values[*offset..offset + len],
            Storage::Map { map, offset, len, casts } => {
                (casts.view)(&map[*offset..offset + len * size_of::<A>()])
            }
        }
    }
}

impl<A> DerefMut for AlignedBuffer<A> {
    fn deref_mut(&mut self) -> &mut [A] {
        match &mut self.storage {
            Storage::Heap { values, offset, len } => &mut values[*offset..*offset + *len],
            Storage::Map { map, offset, len, casts } => {
                (casts.view_mut)(&mut map[*offset..*offset + *len * size_of::<A>()])
            }
        }
    }
}

impl<A: Clone> Clone for AlignedBuffer<A> {
    fn clone(&self) -> Self {
        let casts = match &self.storage {
            Storage::Map { casts, .. } => Some(*casts),
            Storage::Heap { .. } => None,
        };
        let Some(first) = self.first() else { return Self::new() };
        let mut copy = Self::placed(self.len(), first.clone(), casts);
        copy.clone_from_slice(self);
        copy
    }
}

/// Equal when the values are: where they sit does not count.
impl<A: PartialEq> PartialEq for AlignedBuffer<A> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<A: fmt::Debug> fmt::Debug for AlignedBuffer<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_buffers_start_on_a_cache_line() {
        for len in [0, 1, 3, 17, 1000] {
            let buffer = AlignedBuffer::<f64>::filled(len, 2.5);
            assert_eq!(buffer.len(), len);
            assert!(len == 0 || (buffer.as_ptr() as usize).is_multiple_of(CACHE_LINE));
            assert!(buffer.iter().all(|&v| v == 2.5));
            assert!(!buffer.is_mapped());
        }
    }

    #[test]
    fn large_buffers_start_on_a_huge_page() {
        let len = HUGE_PAGE / 4 + 5;
        let mut buffer = AlignedBuffer::<f32>::filled(len, 1.0);
        if buffer.is_mapped() {
            assert!((buffer.as_ptr() as usize).is_multiple_of(HUGE_PAGE));
        }
        buffer[len - 1] = 3.0;
        let copy = buffer.clone();
        assert_eq!(copy, buffer);
        assert_eq!((copy.len(), copy[len - 1], copy[0]), (len, 3.0, 1.0));
    }
}
