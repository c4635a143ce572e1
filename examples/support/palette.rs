//! One colour per rule, by the rule's place in an example's list, so that a rule has the same
//! colour in every picture the examples draw.

use plotters::style::RGBColor;

/// The "Tableau 10" colours and a dark grey, then the other half of "Tableau 20": one per
/// rule of the crate, chosen to stay apart from each other on white. The pale colours come
/// late so that the first rules get the colours that read best as thin lines.
const COLORS: [RGBColor; 20] = [
    RGBColor(78, 121, 167),
    RGBColor(242, 142, 43),
    RGBColor(225, 87, 89),
    RGBColor(118, 183, 178),
    RGBColor(89, 161, 79),
    RGBColor(176, 122, 161),
    RGBColor(156, 117, 95),
    RGBColor(255, 157, 167),
    RGBColor(237, 201, 72),
    RGBColor(186, 176, 172),
    RGBColor(64, 64, 64),
    RGBColor(73, 152, 148),
    RGBColor(211, 114, 149),
    RGBColor(182, 153, 45),
    RGBColor(160, 203, 232),
    RGBColor(140, 209, 125),
    RGBColor(212, 166, 200),
    RGBColor(255, 190, 125),
    RGBColor(121, 112, 110),
    RGBColor(215, 181, 166),
];

/// The colour of the rule at `index` in its list (repeating after twenty rules).
pub fn color(index: usize) -> RGBColor {
    COLORS[index % COLORS.len()]
}
