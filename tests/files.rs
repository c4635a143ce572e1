//! Checkpoint files: crash safety, errors that name the file, both encodings.

use std::path::PathBuf;

use ndarray::Array2;
use ndarray_optim::checkpoint::{Encoding, ScalarRecord};
use ndarray_optim::{Adadelta, Checkpoint, Error, Momentum, NAdam, Optimizer};

pub(crate) const ENCODINGS: [Encoding; 2] = [Encoding::Json, Encoding::Postcard];

/// A folder of its own for one test, removed when dropped.
pub(crate) struct Folder(PathBuf);

impl Folder {
    pub(crate) fn new(test: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("ndarray-optim-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Folder(path)
    }

    pub(crate) fn file(&self, name: &str) -> PathBuf {
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

/// The files in `folder`, by name.
pub(crate) fn listing(folder: &Folder) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(&folder.0)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A crash during a save leaves a torn temporary file and the checkpoint itself whole; a
/// leftover temporary file of any name changes nothing for the next saves and loads.
#[test]
fn a_crash_during_a_save_leaves_the_old_checkpoint() {
    let folder = Folder::new("crash");
    let path = folder.file("opt.ckpt");
    let (old, new) = (trained(2), trained(3));
    for encoding in ENCODINGS {
        old.save(&path, encoding).unwrap();
        assert_eq!(listing(&folder), ["opt.ckpt"]);
        let torn = new.checkpoint().to_bytes(encoding).unwrap();
        let leftovers = [folder.file("opt.ckpt.tmp"), folder.file(".opt.ckpt.1.0.tmp")];
        for temp in &leftovers {
            std::fs::write(temp, &torn[..torn.len() / 2]).unwrap();
        }
        assert_eq!(Optimizer::load(&path).unwrap().checkpoint(), old.checkpoint());
        assert!(Optimizer::<Adadelta, f32>::load(&leftovers[0]).is_err());

        new.save(&path, encoding).unwrap();
        assert_eq!(Optimizer::load(&path).unwrap().checkpoint(), new.checkpoint());
        for temp in &leftovers {
            assert_eq!(std::fs::read(temp).unwrap(), &torn[..torn.len() / 2]);
            std::fs::remove_file(temp).unwrap();
        }
        assert_eq!(listing(&folder), ["opt.ckpt"]);
    }
}

/// Errors name the path the caller gave, never a temporary file's.
#[test]
fn a_failed_save_keeps_the_old_file_and_names_the_path() {
    let folder = Folder::new("failed");
    let opt = trained(1);
    let nowhere = folder.file("missing/opt.ckpt");
    let err = opt.save(&nowhere, Encoding::Postcard).unwrap_err();
    assert!(
        matches!(&err, Error::Io { path, kind: std::io::ErrorKind::NotFound, .. }
            if *path == nowhere),
        "{err:?}"
    );
    assert!(err.to_string().starts_with(&format!("{}: ", nowhere.display())), "{err}");
    assert!(!err.to_string().contains(".tmp"), "{err}");

    // A folder where the file should be: the rename fails, the folder and its contents stay.
    let taken = folder.file("taken");
    std::fs::create_dir(&taken).unwrap();
    std::fs::write(taken.join("inside"), b"kept").unwrap();
    let err = opt.save(&taken, Encoding::Json).unwrap_err();
    assert!(matches!(&err, Error::Io { path, .. } if *path == taken), "{err:?}");
    assert!(!err.to_string().contains(".tmp"), "{err}");
    assert_eq!(std::fs::read(taken.join("inside")).unwrap(), b"kept");
    assert_eq!(listing(&folder), ["taken"]);

    let err = Optimizer::<Adadelta, f32>::load(folder.file("absent")).unwrap_err();
    assert!(matches!(err, Error::Io { kind: std::io::ErrorKind::NotFound, .. }), "{err:?}");
    assert!(err.to_string().contains("absent"), "{err}");
}

/// Threads saving to one path at the same time (as every rank of a data-parallel job
/// writing the same name does) each write a temporary file of their own: every save
/// succeeds, and the file, read at any moment, is one whole checkpoint of one of them.
#[test]
fn concurrent_saves_to_one_path_leave_a_whole_checkpoint() {
    let folder = Folder::new("concurrent");
    let path = folder.file("opt.ckpt");
    let versions: Vec<Optimizer<Adadelta, f32>> = (1..=4).map(trained).collect();
    let expected: Vec<_> = versions.iter().map(|opt| opt.checkpoint()).collect();
    versions[0].save(&path, Encoding::Postcard).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let writers: Vec<_> = versions
            .iter()
            .enumerate()
            .map(|(index, opt)| {
                let path = &path;
                scope.spawn(move || {
                    for round in 0..150 {
                        let encoding = ENCODINGS[(index + round) % 2];
                        opt.save(path, encoding).unwrap();
                    }
                })
            })
            .collect();
        let reader = scope.spawn(|| {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let loaded = Optimizer::<Adadelta, f32>::load(&path).unwrap().checkpoint();
                assert!(expected.contains(&loaded), "a checkpoint no save wrote");
                reads += 1;
            }
            reads
        });
        for writer in writers {
            writer.join().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    });
    assert!(expected.contains(&Optimizer::load(&path).unwrap().checkpoint()));
    assert_eq!(listing(&folder), ["opt.ckpt"]);
}

/// A symbolic link left at a temporary name (the old fixed `<path>.tmp`, or names of the
/// form saves use) is never followed: the file it points to stays as it was.
#[cfg(unix)]
#[test]
fn a_link_at_a_temporary_name_is_not_followed() {
    let folder = Folder::new("symlink");
    let victim = folder.file("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let path = folder.file("opt.ckpt");
    let mut links = vec!["opt.ckpt.tmp".to_owned()];
    for pid in [std::process::id(), 1] {
        for counter in 0..16 {
            links.push(format!(".opt.ckpt.{pid}.{counter}.tmp"));
            links.push(format!(".opt.ckpt.tmp.{pid}.{counter}"));
        }
    }
    for link in &links {
        std::os::unix::fs::symlink(&victim, folder.file(link)).unwrap();
    }
    let opt = trained(2);
    for encoding in ENCODINGS {
        opt.save(&path, encoding).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(Optimizer::load(&path).unwrap().checkpoint(), opt.checkpoint());
    }
    for link in &links {
        assert!(folder.file(link).symlink_metadata().unwrap().file_type().is_symlink());
    }
    assert_eq!(listing(&folder).len(), links.len() + 2);
}

/// A 3 GB file that is not a checkpoint is refused from its first line, without reading the
/// rest (a sparse file: reading it would take seconds and 3 GB of memory).
#[test]
fn a_huge_file_that_is_not_a_checkpoint_is_refused_unread() {
    let folder = Folder::new("huge");
    let path = folder.file("huge.ckpt");
    let headers: [&[u8]; 3] = [
        b"garbage\n",
        b"",
        // A header that announces less than the file holds.
        b"ndarray-optim 1 postcard adadelta f32 10 00000000\n",
    ];
    for header in headers {
        let mut file = std::fs::File::create(&path).unwrap();
        std::io::Write::write_all(&mut file, header).unwrap();
        file.set_len(3 << 30).unwrap();
        drop(file);
        let start = std::time::Instant::now();
        let (result, allocated) =
            crate::alloc::allocated_bytes(|| Optimizer::<Adadelta, f32>::load(&path));
        let err = result.unwrap_err();
        assert!(matches!(err, Error::CorruptCheckpoint { .. }), "{err:?}");
        assert!(start.elapsed() < std::time::Duration::from_secs(1), "{:?}", start.elapsed());
        assert!(allocated < 64 << 10, "{allocated} bytes allocated");
    }
}

/// A file whose size is not what its header announces is refused before its payload is
/// read; so is a header announcing an absurd length.
#[test]
fn a_file_of_another_size_than_announced_is_refused() {
    let folder = Folder::new("sizes");
    let path = folder.file("opt.ckpt");
    let bytes = trained(2).checkpoint().to_bytes(Encoding::Postcard).unwrap();
    for (cut, extra) in [(1, 0), (bytes.len() / 2, 0), (0, 1), (0, 1000)] {
        let mut changed = bytes[..bytes.len() - cut].to_vec();
        changed.extend(std::iter::repeat_n(0, extra));
        std::fs::write(&path, &changed).unwrap();
        let err = Optimizer::<Adadelta, f32>::load(&path).unwrap_err();
        assert!(err.to_string().contains("the header announces a payload of"), "{err}");
    }
    let absurd = format!("ndarray-optim 1 postcard adadelta f32 {} 00000000\n", u64::MAX);
    std::fs::write(&path, absurd).unwrap();
    let err = Optimizer::<Adadelta, f32>::load(&path).unwrap_err();
    assert!(matches!(err, Error::CorruptCheckpoint { .. }), "{err:?}");
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(Optimizer::load(&path).unwrap().checkpoint(), trained(2).checkpoint());
}

/// An endless source such as `/dev/zero` is refused at once, in bounded memory.
#[cfg(target_os = "linux")]
#[test]
fn an_endless_source_is_refused_quickly() {
    let start = std::time::Instant::now();
    let (result, allocated) =
        crate::alloc::allocated_bytes(|| Optimizer::<Adadelta, f32>::load("/dev/zero"));
    let err = result.unwrap_err();
    assert!(matches!(err, Error::CorruptCheckpoint { .. }), "{err:?}");
    assert!(start.elapsed() < std::time::Duration::from_secs(1));
    assert!(allocated < 64 << 10, "{allocated} bytes allocated");
}

/// A file of bare serde JSON (`serde_json::to_string(&opt)`), compact or pretty, is named as
/// such, with how to read it.
#[test]
fn bare_serde_json_is_named() {
    let folder = Folder::new("bare");
    let path = folder.file("opt.json");
    let opt = trained(1);
    for json in [serde_json::to_string(&opt).unwrap(), serde_json::to_string_pretty(&opt).unwrap()]
    {
        std::fs::write(&path, &json).unwrap();
        let err = Optimizer::<Adadelta, f32>::load(&path).unwrap_err();
        assert!(matches!(err, Error::CorruptCheckpoint { .. }), "{err:?}");
        assert!(err.to_string().contains("bare serde JSON"), "{err}");
        assert!(err.to_string().contains("serde_json::from_slice"), "{err}");
        let err = Checkpoint::<Adadelta, f32>::from_bytes(json.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("bare serde JSON"), "{err}");
    }
}

/// A save streams the payload into the file: it allocates a small, fixed amount, far below
/// the state it writes, and the file holds exactly the checkpoint's bytes.
#[test]
fn a_save_streams_the_state_into_the_file() {
    let folder = Folder::new("streaming");
    let path = folder.file("opt.ckpt");
    let mut opt =
        Optimizer::<ndarray_optim::Adam, f32>::new(ndarray_optim::Adam::default()).unwrap();
    let numel = 1 << 20;
    let mut w = ndarray::Array1::<f32>::linspace(-1.0, 1.0, numel);
    let g = w.mapv(|x| x * 0.5 - 0.1);
    opt.step("w", &mut w, &g).unwrap();
    let state = opt.state_bytes() as u64;
    assert_eq!(state, 8 * numel as u64);
    for encoding in ENCODINGS {
        let (result, allocated) = crate::alloc::allocated_bytes(|| opt.save(&path, encoding));
        result.unwrap();
        println!("{encoding:?}: a save of {state} bytes of state allocated {allocated} bytes");
        assert!(allocated < 256 << 10, "{encoding:?}: {allocated} bytes allocated");
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes, opt.checkpoint().to_bytes(encoding).unwrap(), "{encoding:?}");
    }
}

/// Saving an optimizer writes the bytes of its checkpoint, for every rule and element type,
/// whatever the memory layout: the streamed encoding is the one the format has always had.
#[test]
fn a_saved_file_holds_the_bytes_of_the_checkpoint() {
    struct SameBytes(Folder);

    impl crate::common::RuleCheck for SameBytes {
        fn check<R, A>(&mut self, rule: R)
        where
            R: ndarray_optim::UpdateRule + serde::Serialize + serde::de::DeserializeOwned,
            A: ndarray_optim::Element + serde::Serialize + serde::de::DeserializeOwned,
        {
            use ndarray::ShapeBuilder;
            let mut opt = Optimizer::<R, A>::new(rule.clone()).unwrap();
            opt.add_group("other", rule).unwrap();
            opt.assign("b", "other").unwrap();
            opt.assign("never", "other").unwrap();
            let mut w = ndarray::Array2::<A>::from_elem((3, 4).f(), A::from_f64(0.5));
            let mut b = ndarray::Array1::<A>::from_elem(3, A::from_f64(-0.25));
            for step in 0..3 {
                let scale = A::from_f64(step as f64 - 0.5);
                opt.step("w", &mut w, &ndarray::Array2::from_elem((3, 4), scale)).unwrap();
                opt.step("b", &mut b, &ndarray::Array1::from_elem(3, scale)).unwrap();
            }
            let path = self.0.file("opt.ckpt");
            for encoding in ENCODINGS {
                opt.save(&path, encoding).unwrap();
                let bytes = std::fs::read(&path).unwrap();
                assert_eq!(bytes, opt.checkpoint().to_bytes(encoding).unwrap());
                opt.checkpoint().save(&path, encoding).unwrap();
                assert_eq!(std::fs::read(&path).unwrap(), bytes);
                assert_eq!(
                    serde_json::to_vec(&opt).unwrap(),
                    serde_json::to_vec(&opt.checkpoint()).unwrap()
                );
                assert_eq!(Optimizer::<R, A>::load(&path).unwrap(), opt);
            }
        }
    }
    crate::common::for_each_rule(&mut SameBytes(Folder::new("same-bytes")));
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
    // 54 values of f32 in two buffers each: 432 bytes of floats, plus names, the header and
    // a byte per buffer and group for the state precision (format version 4).
    assert!(postcard < 432 + 260 && json > 2 * postcard, "json {json} bytes, postcard {postcard}");
}

/// JSON writes NaN and infinities as `null`, which does not read back: a save in JSON refuses
/// every such value, named, not only those of buffers.
#[test]
fn json_refuses_every_value_it_cannot_store() {
    let folder = Folder::new("json-nan");
    let path = folder.file("opt.json");
    let mut opt = Optimizer::<NAdam, f64>::new(NAdam::default()).unwrap();
    opt.set_clip(Some(ndarray_optim::Clip::Norm { max_norm: 1.0 })).unwrap();
    let mut w = Array2::<f64>::from_elem((2, 2), 0.5);
    opt.step("w", &mut w, &Array2::from_elem((2, 2), 0.25)).unwrap();
    type Edit = fn(&mut Checkpoint<NAdam, f64>);
    let edits: [(&str, Edit); 6] = [
        ("scalar `mu_product` of `w` is NaN", |c| {
            c.tensors[0].state.as_mut().unwrap().scalars[0].value = f64::NAN;
        }),
        ("hyperparameter `lr` of group `default`", |c| c.groups[0].hyper.lr = f64::NAN),
        ("hyperparameter `eps` of group `default`", |c| c.groups[0].hyper.eps = f64::INFINITY),
        ("the current learning rate of group `default` is NaN", |c| {
            c.groups[0].lr = Some(f64::NAN);
        }),
        ("the clip is inf", |c| {
            c.clip = Some(ndarray_optim::Clip::Norm { max_norm: f64::INFINITY })
        }),
        // No check names shared scalars: the walk over every float finds it.
        ("`shared[0].value` is -inf", |c| {
            c.shared.push(ScalarRecord { name: "d".to_owned(), value: f64::NEG_INFINITY });
        }),
    ];
    for (named, edit) in edits {
        let mut checkpoint = opt.checkpoint();
        edit(&mut checkpoint);
        let err = checkpoint.save(&path, Encoding::Json).unwrap_err();
        assert!(matches!(err, Error::Encode { .. }), "{named}: {err:?}");
        assert!(err.to_string().contains(named), "{named}: {err}");
        let err = checkpoint.to_bytes(Encoding::Json).unwrap_err();
        assert!(err.to_string().contains(named), "{named}: {err}");
        assert!(!path.exists());
        // Postcard stores them bit for bit.
        let back =
            Checkpoint::<NAdam, f64>::from_bytes(&checkpoint.to_bytes(Encoding::Postcard).unwrap());
        assert_eq!(format!("{:?}", back.unwrap()), format!("{checkpoint:?}"));
    }
    opt.save(&path, Encoding::Json).unwrap();
    assert_eq!(Optimizer::load(&path).unwrap(), opt);
}

/// A run that let a non-finite gradient through (PyTorch's default) has NaN in its state: it
/// saves in postcard and loads back exactly as it was; JSON, which has no NaN, refuses at save
/// time, naming the value, and leaves no file.
#[test]
fn state_of_a_run_with_nan_gradients_saves_where_it_can_be_stored() {
    let folder = Folder::new("nan-state");
    let path = folder.file("opt.ckpt");
    let mut opt = Optimizer::<Momentum, f32>::new(Momentum::default()).unwrap();
    opt.set_non_finite(ndarray_optim::NonFinite::Ignore);
    let mut w = Array2::<f32>::zeros((2, 2));
    opt.step("w", &mut w, &Array2::from_elem((2, 2), f32::NAN)).unwrap();
    let err = opt.save(&path, Encoding::Json).unwrap_err();
    assert!(matches!(err, Error::Encode { .. }), "{err:?}");
    assert!(err.to_string().contains("momentum_buffer"), "{err}");
    assert!(!path.exists());
    opt.save(&path, Encoding::Postcard).unwrap();
    let back = Optimizer::<Momentum, f32>::load(&path).unwrap();
    let bits =
        |opt: &Optimizer<Momentum, f32>| opt.checkpoint().to_bytes(Encoding::Postcard).unwrap();
    assert_eq!(bits(&back), bits(&opt));
}
