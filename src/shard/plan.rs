//! The assignment of a model's elements to ranks.

use core::ops::Range;

use ndarray::IxDyn;

use super::{invalid, needs_whole_tensors};
use crate::clip::NORM_BLOCK;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::optimizer::Optimizer;
use crate::rule::UpdateRule;

/// A tensor is cut between ranks only at multiples of this many of its elements (in its
/// row-major order), so a shard is at most this many elements larger than an even share.
///
/// It is the block of the global norm's partial sums: a cut there leaves the norm's bits
/// unchanged. 256 elements are 1 KiB of `f32`, a whole number of cache lines and vectors.
pub const SHARD_BLOCK: usize = NORM_BLOCK;

/// The most ranks a plan is made for, 2²⁴ (16,777,216), beyond the largest MPI jobs: a plan
/// keeps a cut per rank, and a step exchanges a value per rank, so a world given by mistake
/// as a huge number is refused rather than allocated.
pub const MAX_WORLD: usize = 1 << 24;

/// A tensor of a [`ShardPlan`] and its place in the flat order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedTensor<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its shape.
    pub shape: &'a [usize],
    /// Its elements' positions in the flat order of the whole model.
    pub range: Range<usize>,
}

/// The part of a tensor that one rank owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece<'a> {
    /// The tensor's name.
    pub name: &'a str,
    /// The part's positions among the tensor's elements, in row-major order.
    pub elements: Range<usize>,
    /// The part's positions in the rank's shard.
    pub shard: Range<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Tensor {
    name: String,
    shape: Vec<usize>,
    start: usize,
    len: usize,
}

/// A deterministic assignment of a model's elements to `world` ranks: contiguous shards of
/// one flat order, balanced to within [`SHARD_BLOCK`] elements, or kept to whole tensors.
///
/// The flat order takes the tensors by name, each in row-major order. Rank `$r$` owns the
/// positions `$[c_r, c_{r+1})$`, where `$c_r$` is the allowed cut nearest to
/// `$\lfloor r T / N \rfloor$` (`$T$` elements in all). A plan of [`new`](Self::new) may
/// cut at a tensor's start or end, or a multiple of [`SHARD_BLOCK`] elements into it, so no
/// shard holds more than `$\lceil T/N \rceil$` + [`SHARD_BLOCK`] elements. A plan of
/// [`whole_tensors`](Self::whole_tensors) cuts only between tensors, for rules that look at
/// whole tensors. The plan depends only on the names, shapes, `$N$` and which of the two
/// it is, not on the order the tensors are listed in, so every rank and every run computes
/// the same one.
///
/// ```
/// use ndarray_optim::ShardPlan;
///
/// let tensors = [("w1", &[600, 10][..]), ("b1", &[10]), ("w2", &[500]), ("b2", &[4])];
/// let plan = ShardPlan::new(tensors, 2)?;
/// assert_eq!(plan.len(), 6514);
/// // The flat order is b1, b2, w1, w2; w1 is cut 3,328 elements in (13 blocks of 256).
/// assert_eq!((plan.shard(0), plan.shard(1)), (0..3342, 3342..6514));
/// let pieces: Vec<_> = plan.pieces(1).map(|p| (p.name, p.elements, p.shard)).collect();
/// assert_eq!(pieces, [("w1", 3328..6000, 0..2672), ("w2", 0..500, 2672..3172)]);
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardPlan {
    /// In flat order.
    tensors: Vec<Tensor>,
    /// The cuts `$c_0 = 0, …, c_N = T$`.
    cuts: Vec<usize>,
    /// Whether every cut lies between tensors.
    whole_tensors: bool,
}

impl ShardPlan {
    /// Plans the tensors `(name, shape)` over `world` ranks.
    ///
    /// # Errors
    /// [`Error::InvalidSharding`] if `world` is 0 or above [`MAX_WORLD`] or the model has
    /// more elements than a `usize` counts, [`Error::DuplicateParam`] if a name is listed
    /// twice.
    pub fn new<'a>(
        tensors: impl IntoIterator<Item = (&'a str, &'a [usize])>,
        world: usize,
    ) -> Result<Self> {
        Self::planned(tensors, world, false)
    }

    /// Plans the tensors `(name, shape)` over `world` ranks without cutting any: each rank
    /// owns whole tensors, and steps them in their shapes, as with PyTorch's
    /// `ZeroRedundancyOptimizer` (which gives each parameter to the least-loaded rank; these
    /// shards stay contiguous in the flat order). Rules that look at whole tensors
    /// ([`Lamb`](crate::Lamb), [`Muon`](crate::Muon), [`Adafactor`](crate::Adafactor)) and
    /// clipping by each tensor's own norm need such a plan. The cuts are the tensor
    /// boundaries nearest to even shares, so a shard may exceed `$\lceil T/N \rceil$` by up
    /// to the largest tensor, and a rank may own none.
    ///
    /// ```
    /// use ndarray_optim::ShardPlan;
    ///
    /// let tensors = [("w1", &[600, 10][..]), ("b1", &[10]), ("w2", &[500]), ("b2", &[4])];
    /// let plan = ShardPlan::whole_tensors(tensors, 2)?;
    /// assert!(plan.keeps_tensors_whole());
    /// // The flat order is b1, b2, w1, w2: the even cut, 3,257, is nearer w1's end.
    /// assert_eq!((plan.shard(0), plan.shard(1)), (0..6014, 6014..6514));
    /// let pieces: Vec<_> = plan.pieces(0).map(|p| (p.name, p.elements)).collect();
    /// assert_eq!(pieces, [("b1", 0..10), ("b2", 0..4), ("w1", 0..6000)]);
    /// # Ok::<(), ndarray_optim::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn whole_tensors<'a>(
        tensors: impl IntoIterator<Item = (&'a str, &'a [usize])>,
        world: usize,
    ) -> Result<Self> {
        Self::planned(tensors, world, true)
    }

    /// Plans the tensors `(name, shape)` over `world` ranks as `optimizer` needs them:
    /// cut into even shares ([`new`](Self::new)) if every group's rule steps a part of a
    /// tensor as it steps it inside the whole tensor (element by element, or with a
    /// [reduction](crate::UpdateRule::reduction)) and the optimizer does not clip each tensor
    /// by its own norm, else [keeping tensors whole](Self::whole_tensors). The plan for
    /// [`ShardedOptimizer::new`](crate::ShardedOptimizer::new) of this optimizer, without
    /// knowing its rules; a group added later is checked there.
    ///
    /// ```
    /// use ndarray_optim::{AdamW, Lamb, Optimizer, ShardPlan};
    ///
    /// let tensors = [("w", &[600, 10][..]), ("b", &[10])];
    /// let adamw = Optimizer::<_, f32>::new(AdamW::default())?;
    /// assert!(!ShardPlan::for_optimizer(&adamw, tensors, 2)?.keeps_tensors_whole());
    /// let lamb = Optimizer::<_, f32>::new(Lamb::default())?;
    /// assert!(ShardPlan::for_optimizer(&lamb, tensors, 2)?.keeps_tensors_whole());
    /// # Ok::<(), ndarray_optim::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn for_optimizer<'a, R: UpdateRule, A: Element>(
        optimizer: &Optimizer<R, A>,
        tensors: impl IntoIterator<Item = (&'a str, &'a [usize])>,
        world: usize,
    ) -> Result<Self> {
        Self::planned(tensors, world, needs_whole_tensors(optimizer).is_some())
    }

    fn planned<'a>(
        tensors: impl IntoIterator<Item = (&'a str, &'a [usize])>,
        world: usize,
        whole_tensors: bool,
    ) -> Result<Self> {
        if world == 0 {
            return Err(invalid("a plan needs at least one rank".to_owned()));
        }
        if world > MAX_WORLD {
            return Err(invalid(format!("a world of {world} ranks is above {MAX_WORLD}")));
        }
        let mut listed: Vec<(&str, &[usize])> = tensors.into_iter().collect();
        listed.sort_by(|a, b| a.0.cmp(b.0));
        if let Some(pair) = listed.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(Error::DuplicateParam {
                param: pair[0].0.to_owned(),
                in_what: "shard plan",
            });
        }
        let too_large = || invalid("the model has more elements than a usize counts".to_owned());
        let mut start = 0_usize;
        let mut flat = Vec::with_capacity(listed.len());
        for (name, shape) in listed {
            let len =
                shape.iter().try_fold(1_usize, |n, &d| n.checked_mul(d)).ok_or_else(too_large)?;
            flat.push(Tensor { name: name.to_owned(), shape: shape.to_vec(), start, len });
            start = start.checked_add(len).ok_or_else(too_large)?;
        }
        let total = start;
        let cuts = (0..=world)
            .map(|rank| {
                let even = (rank as u128 * total as u128 / world as u128) as usize;
                nearest_cut(&flat, even, whole_tensors)
            })
            .collect();
        Ok(ShardPlan { tensors: flat, cuts, whole_tensors })
    }

    /// Whether every cut lies between tensors ([`whole_tensors`](Self::whole_tensors)), so
    /// that every piece is a whole tensor.
    pub fn keeps_tensors_whole(&self) -> bool {
        self.whole_tensors
    }

    /// The number of ranks.
    pub fn world(&self) -> usize {
        self.cuts.len() - 1
    }

    /// The number of elements of all tensors.
    pub fn len(&self) -> usize {
        self.cuts[self.world()]
    }

    /// Whether the plan has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The positions in the flat order that `rank` owns (empty for a rank outside the world).
    pub fn shard(&self, rank: usize) -> Range<usize> {
        match (self.cuts.get(rank), self.cuts.get(rank + 1)) {
            (Some(&start), Some(&end)) => start..end,
            _ => 0..0,
        }
    }

    /// How many elements `rank` owns (0 for a rank outside the world).
    pub fn load(&self, rank: usize) -> usize {
        self.shard(rank).len()
    }

    /// The tensors in the flat order.
    pub fn tensors(&self) -> impl ExactSizeIterator<Item = PlannedTensor<'_>> {
        self.tensors.iter().map(Tensor::planned)
    }

    /// The tensor named `name`, if the plan has it.
    pub fn tensor(&self, name: &str) -> Option<PlannedTensor<'_>> {
        self.position(name).map(|index| self.tensors[index].planned())
    }

    /// The parts of tensors that `rank` owns, in the flat order. A tensor without elements
    /// is the piece of the rank whose shard holds the position where it starts (the last
    /// rank's for the model's end).
    pub fn pieces(&self, rank: usize) -> impl Iterator<Item = Piece<'_>> {
        self.shaped_pieces(rank).map(|(piece, _)| piece)
    }

    /// [`pieces`](Self::pieces), each with the shape [`piece_shape`](Self::piece_shape)
    /// gives it.
    pub(crate) fn shaped_pieces(&self, rank: usize) -> impl Iterator<Item = (Piece<'_>, IxDyn)> {
        let shard = self.shard(rank);
        // Tensors that end before the shard, or at its start and have elements, are not in it.
        let first =
            self.tensors.partition_point(|t| t.start < shard.start && t.end() <= shard.start);
        self.tensors[first..].iter().take_while(move |t| t.start <= shard.end).filter_map(
            move |t| {
                let elements = self.part(t, rank)?;
                let start = t.start + elements.start - shard.start;
                let shape = self.shape_of(t, elements.len());
                Some((
                    Piece { name: &t.name, shard: start..start + elements.len(), elements },
                    shape,
                ))
            },
        )
    }

    /// The ranks holding a part of tensor `name`, with their parts' positions among its
    /// elements, in rank order.
    pub(crate) fn holders(
        &self,
        name: &str,
    ) -> Option<impl Iterator<Item = (usize, Range<usize>)>> {
        let tensor = &self.tensors[self.position(name)?];
        Some((0..self.world()).filter_map(move |rank| Some((rank, self.part(tensor, rank)?))))
    }

    /// The shape of the piece of tensor `name` that `rank` steps, if it holds one: the
    /// tensor's under a plan that keeps tensors whole, else `[len]` of its part.
    pub(crate) fn piece_shape(&self, name: &str, rank: usize) -> Option<IxDyn> {
        let tensor = &self.tensors[self.position(name)?];
        let part = self.part(tensor, rank)?;
        Some(self.shape_of(tensor, part.len()))
    }

    /// The shape of a piece of `len` of `tensor`'s elements.
    fn shape_of(&self, tensor: &Tensor, len: usize) -> IxDyn {
        if self.whole_tensors { IxDyn(&tensor.shape) } else { IxDyn(&[len]) }
    }

    /// The positions among `tensor`'s elements that `rank` holds, if it holds a part: the
    /// overlap with its shard, or, for a tensor without elements, the empty part of the rank
    /// whose shard holds the position where it starts.
    fn part(&self, tensor: &Tensor, rank: usize) -> Option<Range<usize>> {
        let shard = self.shard(rank);
        let (start, end) = (tensor.start.max(shard.start), tensor.end().min(shard.end));
        let holds =
            if tensor.len == 0 { self.holder_of_empty(tensor.start) == rank } else { start < end };
        holds.then(|| start - tensor.start..end - tensor.start)
    }

    /// The position in the flat order of tensor `name`.
    pub(crate) fn position(&self, name: &str) -> Option<usize> {
        self.tensors.binary_search_by(|t| t.name.as_str().cmp(name)).ok()
    }

    /// The rank whose pieces include a tensor without elements at flat position `start`.
    fn holder_of_empty(&self, start: usize) -> usize {
        (0..self.world()).find(|&rank| start < self.cuts[rank + 1]).unwrap_or(self.world() - 1)
    }
}

impl Tensor {
    fn end(&self) -> usize {
        self.start + self.len
    }

    fn planned(&self) -> PlannedTensor<'_> {
        PlannedTensor { name: &self.name, shape: &self.shape, range: self.start..self.end() }
    }
}

/// The allowed cut nearest to flat position `even` (the earlier of two as near): the start or
/// end of the tensor holding it, or, unless the plan keeps `whole_tensors`, a whole number of
/// [`SHARD_BLOCK`]s into that tensor.
fn nearest_cut(tensors: &[Tensor], even: usize, whole_tensors: bool) -> usize {
    let holder = tensors.partition_point(|t| t.end() <= even);
    let Some(tensor) = tensors.get(holder) else { return even };
    let into = even - tensor.start;
    // The holder has elements (it ends after `even`), so a block of its length is not 0.
    let block = if whole_tensors { tensor.len } else { SHARD_BLOCK };
    let below = into - into % block;
    let above = (below + block).min(tensor.len);
    tensor.start + if into - below <= above - into { below } else { above }
}
