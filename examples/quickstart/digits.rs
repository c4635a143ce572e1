//! The UCI optical digits (examples/data/digits.csv): 1,797 images of 8x8 pixels, each pixel a
//! count 0..=16, with the digit they show.

use ndarray::{Array2, Axis};
use ndarray_rand::rand::Rng;
use ndarray_rand::rand::seq::SliceRandom;

/// The data file, built into the example so that it runs from any directory.
const CSV: &str = include_str!("../data/digits.csv");
const PIXELS: usize = 64;
/// The largest pixel value; inputs are scaled by it to [0, 1].
const MAX_PIXEL: f32 = 16.0;
/// The number of classes, the digits 0 to 9.
pub const CLASSES: usize = 10;

/// Images as rows of pixels scaled to [0, 1], and their labels.
#[derive(Clone, Debug)]
pub struct Digits {
    pub images: Array2<f32>,
    pub labels: Vec<usize>,
}

impl Digits {
    /// Reads the data set: one image a line, 64 pixels then the label.
    pub fn load() -> Result<Digits, String> {
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for (number, line) in CSV.lines().enumerate() {
            let fields: Vec<&str> = line.split(',').collect();
            let [image @ .., label] = fields.as_slice() else { unreachable!("split yields one") };
            let bad = |what: &str| format!("digits.csv line {}: {what}", number + 1);
            if image.len() != PIXELS {
                return Err(bad(&format!("{} pixels, expected {PIXELS}", image.len())));
            }
            for value in image {
                let value: u8 = value.parse().map_err(|_| bad(&format!("pixel {value:?}")))?;
                pixels.push(f32::from(value) / MAX_PIXEL);
            }
            labels.push(
                label
                    .parse()
                    .ok()
                    .filter(|&l| l < CLASSES)
                    .ok_or(bad(&format!("label {label:?}")))?,
            );
        }
        let images = Array2::from_shape_vec((labels.len(), PIXELS), pixels)
            .expect("every line added exactly PIXELS values");
        Ok(Digits { images, labels })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// The examples at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Digits {
        Digits {
            images: self.images.select(Axis(0), indices),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// Shuffles the examples and holds out `held_out` of them: (training set, held-out set).
    pub fn split(&self, held_out: usize, rng: &mut impl Rng) -> (Digits, Digits) {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(rng);
        let (test, train) = order.split_at(held_out);
        (self.select(train), self.select(test))
    }
}
