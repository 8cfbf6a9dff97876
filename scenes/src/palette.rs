//! The named colours of objects and backgrounds, and how a measured colour gets its name back.
//!
//! The two lists are disjoint on purpose: objects are saturated or bright, backgrounds dark or muted,
//! so an object always stands out from whatever it moves over, and the evaluator can tell object
//! pixels from background pixels by distance alone. Within each list the colours are far apart in
//! CIELAB, so a blurry or compressed rendering still lands nearest to the colour that was asked for.

use serde::{Deserialize, Serialize};

/// An object's colour; its name is one caption word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    Red,
    Orange,
    Yellow,
    Green,
    Cyan,
    Blue,
    Purple,
    Pink,
    White,
}

/// A background's colour; "dark blue" and "dark green" are two caption words each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BackgroundColour {
    #[serde(rename = "black")]
    Black,
    #[serde(rename = "gray")]
    Gray,
    #[serde(rename = "dark blue")]
    DarkBlue,
    #[serde(rename = "dark green")]
    DarkGreen,
    #[serde(rename = "brown")]
    Brown,
}

/// Objects whose colour is at least this far (Euclidean RGB) from the background are allowed on it:
/// far above H.264's colour error and the evaluator's foreground threshold.
const MIN_CONTRAST: u32 = 100;

impl Colour {
    pub const ALL: [Colour; 9] = [
        Colour::Red,
        Colour::Orange,
        Colour::Yellow,
        Colour::Green,
        Colour::Cyan,
        Colour::Blue,
        Colour::Purple,
        Colour::Pink,
        Colour::White,
    ];

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 40, 40],
            Colour::Orange => [245, 140, 20],
            Colour::Yellow => [240, 220, 40],
            Colour::Green => [40, 190, 60],
            Colour::Cyan => [40, 210, 220],
            Colour::Blue => [30, 110, 235],
            Colour::Purple => [160, 40, 180],
            Colour::Pink => [245, 135, 190],
            Colour::White => [245, 245, 245],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Orange => "orange",
            Colour::Yellow => "yellow",
            Colour::Green => "green",
            Colour::Cyan => "cyan",
            Colour::Blue => "blue",
            Colour::Purple => "purple",
            Colour::Pink => "pink",
            Colour::White => "white",
        }
    }

    /// The squared RGB distance to another object colour.
    pub fn squared_distance_to(self, other: Colour) -> u32 {
        squared_distance(self.rgb(), other.rgb())
    }

    /// Whether an object of this colour is allowed on this background colour (see [`MIN_CONTRAST`]).
    pub fn stands_out_on(self, background: BackgroundColour) -> bool {
        squared_distance(self.rgb(), background.rgb()) >= MIN_CONTRAST * MIN_CONTRAST
    }

    /// The object colour nearest to a measured one in CIELAB, where distance follows what people see
    /// better than RGB does (orange and yellow are close in RGB, far apart to the eye).
    pub fn nearest(rgb: [f64; 3]) -> Colour {
        nearest_of(&Colour::ALL, rgb, |c| c.rgb())
    }
}

impl BackgroundColour {
    pub const ALL: [BackgroundColour; 5] = [
        BackgroundColour::Black,
        BackgroundColour::Gray,
        BackgroundColour::DarkBlue,
        BackgroundColour::DarkGreen,
        BackgroundColour::Brown,
    ];

    pub fn rgb(self) -> [u8; 3] {
        match self {
            BackgroundColour::Black => [12, 12, 12],
            BackgroundColour::Gray => [110, 110, 110],
            BackgroundColour::DarkBlue => [20, 30, 100],
            BackgroundColour::DarkGreen => [20, 75, 35],
            BackgroundColour::Brown => [95, 55, 25],
        }
    }

    /// The caption words, in order.
    pub fn words(self) -> &'static [&'static str] {
        match self {
            BackgroundColour::Black => &["black"],
            BackgroundColour::Gray => &["gray"],
            BackgroundColour::DarkBlue => &["dark", "blue"],
            BackgroundColour::DarkGreen => &["dark", "green"],
            BackgroundColour::Brown => &["brown"],
        }
    }

    /// The background colour nearest to a measured one in CIELAB.
    pub fn nearest(rgb: [f64; 3]) -> BackgroundColour {
        nearest_of(&BackgroundColour::ALL, rgb, |c| c.rgb())
    }
}

fn squared_distance(a: [u8; 3], b: [u8; 3]) -> u32 {
    a.iter().zip(b).map(|(&x, y)| u32::from(x.abs_diff(y)).pow(2)).sum()
}

fn nearest_of<T: Copy>(candidates: &[T], rgb: [f64; 3], rgb_of: impl Fn(T) -> [u8; 3]) -> T {
    let target = lab(rgb);
    let distance = |c: T| {
        let [r, g, b] = rgb_of(c).map(f64::from);
        let other = lab([r, g, b]);
        (0..3).map(|i| (target[i] - other[i]).powi(2)).sum::<f64>()
    };
    let mut best = candidates[0];
    for &candidate in &candidates[1..] {
        if distance(candidate) < distance(best) {
            best = candidate;
        }
    }
    best
}

/// sRGB (0..=255 per channel) to CIELAB under D65.
pub fn lab(rgb: [f64; 3]) -> [f64; 3] {
    let [r, g, b] = rgb.map(|c| {
        let c = (c / 255.0).clamp(0.0, 1.0);
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    });
    let x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047;
    let y = 0.2126 * r + 0.7152 * g + 0.0722 * b;
    let z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883;
    let f = |t: f64| if t > 0.008856 { t.cbrt() } else { 7.787 * t + 16.0 / 116.0 };
    let (fx, fy, fz) = (f(x), f(y), f(z));
    [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_f64(rgb: [u8; 3]) -> [f64; 3] {
        rgb.map(f64::from)
    }

    #[test]
    fn every_named_colour_is_its_own_nearest() {
        for c in Colour::ALL {
            assert_eq!(Colour::nearest(as_f64(c.rgb())), c);
        }
        for c in BackgroundColour::ALL {
            assert_eq!(BackgroundColour::nearest(as_f64(c.rgb())), c);
        }
    }

    #[test]
    fn object_colours_are_far_apart_to_the_eye() {
        for (i, a) in Colour::ALL.iter().enumerate() {
            for b in &Colour::ALL[i + 1..] {
                let (la, lb) = (lab(as_f64(a.rgb())), lab(as_f64(b.rgb())));
                let d = (0..3).map(|k| (la[k] - lb[k]).powi(2)).sum::<f64>().sqrt();
                assert!(d > 40.0, "{a:?} and {b:?} are only {d:.1} apart in CIELAB");
            }
        }
    }

    #[test]
    fn every_background_leaves_most_object_colours() {
        for bg in BackgroundColour::ALL {
            let allowed = Colour::ALL.iter().filter(|c| c.stands_out_on(bg)).count();
            assert!(allowed >= 7, "{bg:?} allows only {allowed} object colours");
        }
    }

    #[test]
    fn a_slightly_off_colour_keeps_its_name() {
        assert_eq!(Colour::nearest([200.0, 60.0, 50.0]), Colour::Red);
        assert_eq!(Colour::nearest([230.0, 150.0, 40.0]), Colour::Orange);
        assert_eq!(BackgroundColour::nearest([30.0, 30.0, 30.0]), BackgroundColour::Black);
    }
}
