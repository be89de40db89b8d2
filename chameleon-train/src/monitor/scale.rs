//! The scales of a metric chart, shared by the live monitor and the PNG report: axis bounds
//! and the numbers written on the axes.

/// Bounds of a chart of `(step, y)` points: the largest step (at least 1), and the y range with
/// 5% margins (an empty series spans [0, 1]; a flat one gets a span of 1 around its value).
pub fn bounds<'a>(points: impl IntoIterator<Item = &'a (f64, f64)>) -> (f64, [f64; 2]) {
    let (mut lo, mut hi, mut x_hi) = (f64::INFINITY, f64::NEG_INFINITY, 1.0f64);
    for &(x, v) in points {
        (lo, hi, x_hi) = (lo.min(v), hi.max(v), x_hi.max(x));
    }
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    } else if hi - lo < 1e-9 {
        (lo, hi) = (lo - 0.5, hi + 0.5);
    }
    let pad = 0.05 * (hi - lo);
    (x_hi, [lo - pad, hi + pad])
}

/// An axis number: 3 significant digits, in e-notation outside [0.01, 10⁴).
pub fn axis_label(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(0.01..1e4).contains(&a) {
        format!("{v:.2e}")
    } else {
        let decimals = (2 - a.log10().floor() as i32).max(0) as usize;
        format!("{v:.decimals$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_pad_the_values_and_survive_empty_and_flat_series() {
        let (x, [lo, hi]) = bounds(&[(1.0, 2.0), (40.0, 12.0)]);
        assert_eq!(x, 40.0);
        assert!((lo - 1.5).abs() < 1e-12 && (hi - 12.5).abs() < 1e-12);
        assert_eq!(bounds(&[]), (1.0, [-0.05, 1.05]));
        let (_, [lo, hi]) = bounds(&[(3.0, 7.0), (4.0, 7.0)]);
        assert!(lo < 7.0 && hi > 7.0);
    }

    #[test]
    fn axis_numbers_read_well() {
        assert_eq!(axis_label(49.79), "49.8");
        assert_eq!(axis_label(0.1937), "0.194");
        assert_eq!(axis_label(3.0), "3.00");
        assert_eq!(axis_label(123456.0), "1.23e5");
        assert_eq!(axis_label(-2.5e-4), "-2.50e-4");
    }
}
