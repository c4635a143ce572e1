//! Checkpoint files: crash safety, errors that name the file, both encodings.

use std::path::PathBuf;

use ndarray::Array2;
use ndarray_optim::checkpoint::Encoding;
use ndarray_optim::{Adadelta, Checkpoint, Error, Momentum, Optimizer};

const ENCODINGS: [Encoding; 2] = [Encoding::Json, Encoding::Postcard];

/// A folder of its own for one test, removed when dropped.
struct Folder(PathBuf);

impl Folder {
    fn new(test: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("ndarray-optim-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Folder(path)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn trained(steps: usize) -> Optimizer<Adadelta, f32> {
    let mut opt = Optimizer::new(Adadelta::default()).unwrap();
    opt.add_group("slow", Adadelta { lr: 0.1, ..Adadelta::default() }).unwrap();
    opt.assign("b", "slow").unwrap();
    let mut w = Array2::<f32>::from_elem((8, 6), 0.5);
    let mut b = Array2::<f32>::from_elem((1, 6), -0.5);
    for step in 0..steps {
        let scale = step as f32 + 1.0;
        let (gw, gb) = (w.mapv(|x| x * scale), b.mapv(|x| x - scale));
        opt.step("w", &mut w, &gw).unwrap();
        opt.step("b", &mut b, &gb).unwrap();
    }
    opt
}

/// A torn file, whatever byte the write stopped at, is refused as corrupt: it never loads as
/// some other checkpoint.
#[test]
fn every_prefix_of_a_checkpoint_is_refused() {
    for encoding in ENCODINGS {
        let bytes = trained(2).checkpoint().to_bytes(encoding).unwrap();
        for cut in 0..bytes.len() {
            let err = Checkpoint::<Adadelta, f32>::from_bytes(&bytes[..cut]).unwrap_err();
            assert!(matches!(err, Error::CorruptCheckpoint { .. }), "{encoding:?} {cut}: {err}");
        }
        assert!(Checkpoint::<Adadelta, f32>::from_bytes(&bytes).is_ok());
    }
}

/// A crash during a save leaves the temporary file torn and the checkpoint itself whole; the
/// next save replaces both.
#[test]
fn a_crash_during_a_save_leaves_the_old_checkpoint() {
    let folder = Folder::new("crash");
    let path = folder.file("opt.ckpt");
    let temp = folder.file("opt.ckpt.tmp");
    let (old, new) = (trained(2), trained(3));
    for encoding in ENCODINGS {
        old.save(&path, encoding).unwrap();
        assert!(!temp.exists());
        let torn = new.checkpoint().to_bytes(encoding).unwrap();
        std::fs::write(&temp, &torn[..torn.len() / 2]).unwrap();
        assert_eq!(Optimizer::load(&path).unwrap().checkpoint(), old.checkpoint());
        assert!(Optimizer::<Adadelta, f32>::load(&temp).is_err());

        new.save(&path, encoding).unwrap();
        assert_eq!(Optimizer::load(&path).unwrap().checkpoint(), new.checkpoint());
        assert!(!temp.exists());
    }
}

#[test]
fn a_failed_save_keeps_the_old_file_and_names_the_path() {
    let folder = Folder::new("failed");
    let opt = trained(1);
    let nowhere = folder.file("missing/opt.ckpt");
    let err = opt.save(&nowhere, Encoding::Postcard).unwrap_err();
    assert!(
        matches!(&err, Error::Io { path, kind: std::io::ErrorKind::NotFound, .. }
            if *path == folder.file("missing/opt.ckpt.tmp")),
        "{err:?}"
    );
    assert!(err.to_string().contains("opt.ckpt.tmp"), "{err}");

    // A folder where the file should be: the rename fails, the folder and its contents stay.
    let taken = folder.file("taken");
    std::fs::create_dir(&taken).unwrap();
    std::fs::write(taken.join("inside"), b"kept").unwrap();
    assert!(matches!(opt.save(&taken, Encoding::Json), Err(Error::Io { .. })));
    assert_eq!(std::fs::read(taken.join("inside")).unwrap(), b"kept");
    assert!(!folder.file("taken.tmp").exists());

    let err = Optimizer::<Adadelta, f32>::load(folder.file("absent")).unwrap_err();
    assert!(matches!(err, Error::Io { kind: std::io::ErrorKind::NotFound, .. }), "{err:?}");
    assert!(err.to_string().contains("absent"), "{err}");
}

#[test]
fn a_file_of_another_rule_is_refused_by_name() {
    let folder = Folder::new("rule");
    let path = folder.file("opt.json");
    trained(1).save(&path, Encoding::Json).unwrap();
    let err = Optimizer::<Momentum, f32>::load(&path).unwrap_err();
    assert_eq!(err.to_string(), "checkpoint rule is `adadelta`, but the optimizer's is `momentum`");
}

/// JSON has no NaN or infinities: saving such state in JSON is refused with the tensor's name,
/// and postcard keeps every bit.
#[test]
fn non_finite_state_needs_postcard() {
    let mut opt = Optimizer::<Momentum, f64>::new(Momentum::default()).unwrap();
    let mut w = Array2::<f64>::zeros((2, 2));
    opt.step("w", &mut w, &Array2::from_elem((2, 2), f64::MAX)).unwrap();
    opt.step("w", &mut w, &Array2::from_elem((2, 2), f64::MAX)).unwrap();
    let mut checkpoint = opt.checkpoint();
    assert_eq!(checkpoint.tensors[0].state.as_ref().unwrap().buffers[0].values[0], f64::INFINITY);
    checkpoint.tensors[0].state.as_mut().unwrap().buffers[0].values[1] =
        f64::from_bits(0x7ff8_dead);

    let err = checkpoint.to_bytes(Encoding::Json).unwrap_err();
    assert!(matches!(err, Error::Encode { .. }), "{err:?}");
    assert!(err.to_string().contains("`momentum_buffer` of `w` holds inf"), "{err}");

    let bytes = checkpoint.to_bytes(Encoding::Postcard).unwrap();
    let back = Checkpoint::<Momentum, f64>::from_bytes(&bytes).unwrap();
    let value_bits = |c: &Checkpoint<Momentum, f64>| -> Vec<u64> {
        c.tensors[0].state.as_ref().unwrap().buffers[0].values.iter().map(|v| v.to_bits()).collect()
    };
    assert_eq!(value_bits(&back), value_bits(&checkpoint));
}

#[test]
fn postcard_is_the_compact_encoding() {
    let checkpoint = trained(3).checkpoint();
    let json = checkpoint.to_bytes(Encoding::Json).unwrap().len();
    let postcard = checkpoint.to_bytes(Encoding::Postcard).unwrap().len();
    // 54 values of f32 in two buffers each: 432 bytes of floats, plus names and the header.
    assert!(postcard < 432 + 250 && json > 2 * postcard, "json {json} bytes, postcard {postcard}");
}
