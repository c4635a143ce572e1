//! The loss curves of all rules in one SVG chart.

use std::error::Error;
use std::path::Path;

use plotters::prelude::*;

/// One rule's curve: (step, training loss) points.
pub struct Curve<'a> {
    pub label: &'a str,
    pub color: RGBColor,
    pub points: &'a [(u64, f32)],
}

/// The numbers 1, 2 and 5 times a power of ten between `low` and `high`: enough labels on a
/// log axis that spans a decade or two.
fn ticks(low: f64, high: f64) -> Vec<f64> {
    let first = low.log10().floor() as i32;
    let last = high.log10().ceil() as i32;
    (first..=last)
        .flat_map(|exponent| [1.0, 2.0, 5.0].map(|mantissa| mantissa * 10f64.powi(exponent)))
        .filter(|tick| (low..=high).contains(tick))
        .collect()
}

/// A legend label padded so that its box holds it.
///
/// Without a font backend, plotters estimates a text's width at about 0.45 em per character,
/// while the browser draws lowercase sans-serif nearer 0.6 em, so a legend box would be too
/// narrow. Trailing spaces widen the estimate and are not drawn.
pub fn legend_label(label: &str) -> String {
    format!("{label}{}", " ".repeat(label.len().div_ceil(3)))
}

/// Draws `curves` over steps on a log-scaled loss axis, with a legend.
pub fn loss_chart(path: &Path, title: &str, curves: &[Curve<'_>]) -> Result<(), Box<dyn Error>> {
    let points = || curves.iter().flat_map(|curve| curve.points.iter());
    let last_step = points().map(|&(step, _)| step).max().unwrap_or(1).max(1);
    let (low, high) = points()
        .map(|&(_, loss)| f64::from(loss))
        .filter(|loss| loss.is_finite() && *loss > 0.0)
        .fold((f64::INFINITY, 0.0_f64), |(low, high), loss| (low.min(loss), high.max(loss)));
    // A little room above and below, in log terms, so no curve runs along the frame.
    let (low, high) = if low < high { (low / 1.25, high * 1.25) } else { (0.01, 10.0) };

    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(18)
        .x_label_area_size(48)
        .y_label_area_size(70)
        .build_cartesian_2d(
            0..last_step,
            (low..high).log_scale().with_key_points(ticks(low, high)),
        )?;
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .y_desc("training loss (cross-entropy, log scale)")
        .y_label_formatter(&|loss| format!("{loss}"))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 16))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for curve in curves {
        let style = curve.color.stroke_width(2);
        let series = curve.points.iter().map(|&(step, loss)| (step, f64::from(loss)));
        chart
            .draw_series(LineSeries::new(series, style))?
            .label(legend_label(curve.label))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    root.present()?;
    Ok(())
}
