//! Hostile bytes: truncated, bit-flipped or random input is refused with an error, never a
//! panic, and never makes the loader allocate far more than the input.

use ndarray::{Array1, Array2, ShapeBuilder};
use ndarray_optim::checkpoint::Encoding;
use ndarray_optim::{Adam, Checkpoint, Error, Optimizer, RmsProp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::alloc::allocated_bytes;

fn adam() -> Optimizer<Adam, f32> {
    let mut opt = Optimizer::new(Adam::default()).unwrap();
    opt.add_group("head", Adam { lr: 0.01, ..Adam::default() }).unwrap();
    opt.assign("head.w", "head").unwrap();
    opt.assign("later", "head").unwrap();
    let mut w = Array2::<f32>::from_elem((3, 4).f(), 0.5);
    let mut b = Array1::<f32>::from_elem(3, -0.5);
    for step in 0..3 {
        opt.step("head.w", &mut w, &Array2::from_elem((3, 4), step as f32 - 1.0)).unwrap();
        opt.step("b", &mut b, &Array1::from_elem(3, 0.25)).unwrap();
    }
    opt
}

/// One random change of the kinds that storage and transfer cause, or an attacker makes.
pub(crate) fn mutate(rng: &mut StdRng, bytes: &mut Vec<u8>) {
    let len = bytes.len();
    if len == 0 {
        bytes.push(rng.random());
        return;
    }
    match rng.random_range(0..7) {
        0 => {
            let bit = rng.random_range(0..len * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
        }
        1 => bytes[rng.random_range(0..len)] = rng.random(),
        2 => bytes.truncate(rng.random_range(0..len)),
        3 => bytes.insert(rng.random_range(0..=len), rng.random()),
        4 => {
            bytes.remove(rng.random_range(0..len));
        }
        5 => {
            let start = rng.random_range(0..len);
            let end = (start + rng.random_range(1..64)).min(len);
            rng.fill(&mut bytes[start..end]);
        }
        _ => {
            let start = rng.random_range(0..len);
            let end = (start + rng.random_range(1..64)).min(len);
            let span = bytes[start..end].to_vec();
            let at = rng.random_range(0..=len);
            bytes.splice(at..at, span);
        }
    }
}

/// Property: every mutation of real checkpoint bytes, in either encoding, is refused (the
/// header's length and checksum see it), and decoding the bare payload with serde never
/// panics and yields only checked optimizers.
#[test]
fn mutated_checkpoints_are_refused() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let original = adam().checkpoint();
    for encoding in [Encoding::Json, Encoding::Postcard] {
        let bytes = original.to_bytes(encoding).unwrap();
        let payload_start = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
        let mut refused = 0;
        for _ in 0..3000 {
            let mut mutated = bytes.clone();
            for _ in 0..rng.random_range(1..4) {
                mutate(&mut rng, &mut mutated);
            }
            if mutated == bytes {
                continue;
            }
            let err = Checkpoint::<Adam, f32>::from_bytes(&mutated).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::CorruptCheckpoint { .. } | Error::UnsupportedCheckpoint { .. }
                ),
                "{err:?}"
            );
            refused += 1;

            // Without the header nothing checks integrity: decoding may succeed with other
            // values, but only into an optimizer that passed validation.
            let mut payload = bytes[payload_start..].to_vec();
            mutate(&mut rng, &mut payload);
            let decoded = match encoding {
                Encoding::Json => serde_json::from_slice::<Optimizer<Adam, f32>>(&payload).ok(),
                Encoding::Postcard => postcard::from_bytes::<Optimizer<Adam, f32>>(&payload).ok(),
            };
            if let Some(opt) = decoded {
                // Validated: finite and >= 0 (a rate of 0 is valid, as in PyTorch).
                let lrs: Vec<f64> = opt.groups().iter().map(|g| g.hyper().lr).collect();
                assert!(lrs.iter().all(|lr| lr.is_finite() && *lr >= 0.0), "{lrs:?}");
            }
        }
        assert!(refused > 2900, "{refused}");
    }
}

/// Random bytes, also behind a header that is valid for them (as an attacker can write), are
/// refused without a panic.
#[test]
fn random_bytes_are_refused() {
    let mut rng = StdRng::seed_from_u64(7);
    for round in 0..2000 {
        let mut payload = vec![0u8; rng.random_range(0..300)];
        rng.fill(payload.as_mut_slice());
        assert!(Checkpoint::<RmsProp, f64>::from_bytes(&payload).is_err());
        let encoding = if round % 2 == 0 { "postcard" } else { "json" };
        let framed = frame(encoding, "rmsprop", "f64", &payload);
        if let Ok(checkpoint) = Checkpoint::<RmsProp, f64>::from_bytes(&framed) {
            let _ = Optimizer::from_checkpoint(checkpoint);
        }
    }
}

/// The checksum field is the one the checksum does not cover: another spelling of the same
/// number (upper case, a sign) is an alteration, and refused.
#[test]
fn a_checksum_spelt_otherwise_is_refused() {
    let bytes = adam().checkpoint().to_bytes(Encoding::Postcard).unwrap();
    let newline = bytes.iter().position(|&b| b == b'\n').unwrap();
    let crc = newline - 8;
    let spellings = [
        bytes[crc..newline].to_ascii_uppercase(),
        [b"+".as_slice(), &bytes[crc + 1..newline]].concat(),
    ];
    for spelling in spellings {
        if spelling == bytes[crc..newline] {
            continue; // no letter to capitalise
        }
        let altered = [&bytes[..crc], &spelling, &bytes[newline..]].concat();
        let err = Checkpoint::<Adam, f32>::from_bytes(&altered).unwrap_err();
        assert!(matches!(err, Error::CorruptCheckpoint { .. }), "{err:?}");
    }
}

/// Checkpoint bytes around any payload, with the header an honest writer would put.
fn frame(encoding: &str, rule: &str, dtype: &str, payload: &[u8]) -> Vec<u8> {
    let version = ndarray_optim::checkpoint::VERSION;
    let head = format!("ndarray-optim {version} {encoding} {rule} {dtype} {} ", payload.len());
    let mut crc = crc32fast::Hasher::new();
    crc.update(head.as_bytes());
    crc.update(payload);
    let mut bytes = format!("{head}{:08x}\n", crc.finalize()).into_bytes();
    bytes.extend_from_slice(payload);
    bytes
}

/// A payload whose last buffer claims 10¹² values is refused after allocating a small,
/// bounded amount, not the 4 TB it claims. (serde caps what a sequence preallocates.)
#[test]
fn a_huge_length_prefix_allocates_little() {
    let mut checkpoint = adam().checkpoint();
    // Sorted by name, "later" (never stepped) is last; give it state whose last buffer is
    // empty so that the payload ends with that buffer's length prefix, a single zero byte.
    let mut state = checkpoint.tensors[0].state.clone().unwrap();
    state.buffers[1].values.clear();
    checkpoint.tensors.last_mut().unwrap().state = Some(state);
    let bytes = checkpoint.to_bytes(Encoding::Postcard).unwrap();
    let payload_start = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    let mut payload = bytes[payload_start..].to_vec();
    assert_eq!(payload.pop(), Some(0));
    let mut claim: u64 = 1_000_000_000_000;
    while claim >= 0x80 {
        payload.push((claim as u8 & 0x7f) | 0x80);
        claim >>= 7;
    }
    payload.push(claim as u8);
    let framed = frame("postcard", "adam", "f32", &payload);

    let (result, allocated) = allocated_bytes(|| Checkpoint::<Adam, f32>::from_bytes(&framed));
    let err = result.unwrap_err();
    assert!(matches!(err, Error::CorruptCheckpoint { .. }), "{err:?}");
    assert!(allocated < 2 << 20, "{allocated} bytes allocated for {} bytes", framed.len());
    let (result, allocated) =
        allocated_bytes(|| postcard::from_bytes::<Optimizer<Adam, f32>>(&payload));
    assert!(result.is_err());
    assert!(allocated < 2 << 20, "{allocated} bytes allocated for {} bytes", payload.len());
}
