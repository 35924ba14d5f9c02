//! Numbers in a judge's reason, written as `format!` writes them but
//! without its machinery where the digits are plain: a judge explains every
//! measurement, and `{:.4}` and `{}` of a float cost about a thousand
//! instructions each through `core::fmt` (a simulated hour measured every
//! minute writes sixty reasons a check).

use std::fmt::Write;

/// Below this magnitude two different numbers of at most four decimals
/// are more than a rounding interval of an `f64` apart, so a four-decimal
/// text that reads back as the value is its shortest text.
const PLAIN_LIMIT: f64 = 1e11;

/// Append `v` as `format!("{v:.4}")` writes it.
pub(crate) fn push_fixed4(out: &mut String, v: f64) {
    match ten_thousandths(v) {
        Some(units) => push_units(out, v.is_sign_negative(), units, false),
        None => {
            let _ = write!(out, "{v:.4}");
        }
    }
}

/// Append `v` as `format!("{v}")` writes it (the shortest text that reads
/// back as `v`, never in exponent form).
pub(crate) fn push_shortest(out: &mut String, v: f64) {
    match ten_thousandths(v) {
        // The four-decimal text, its trailing zeros dropped, is the
        // shortest when it reads back as `v` (the quotient of two exact
        // integers is correctly rounded, as parsing the text is).
        Some(units) if v.abs() < PLAIN_LIMIT && units as f64 / 1e4 == v.abs() => {
            push_units(out, v.is_sign_negative(), units, true);
        }
        _ => {
            let _ = write!(out, "{v}");
        }
    }
}

/// `|v|` in ten-thousandths, rounded to the nearest, where the product
/// `|v| × 10⁴` in floating point rounds as the exact product does: `v`
/// finite and not huge, and the product's fraction not within its rounding
/// error of one half (exact halves and near-halves are left to `core::fmt`,
/// which rounds the exact value).
fn ten_thousandths(v: f64) -> Option<u64> {
    let t = v.abs() * 1e4;
    if t.is_nan() || t >= 1e15 {
        return None;
    }
    let whole = t.floor();
    // Exact: `t` and its floor are within a factor of two or `t < 1`.
    let fraction = t - whole;
    // The product is within half an ulp of the exact one.
    if (fraction - 0.5).abs() <= f64::EPSILON * t.max(1.0) {
        return None;
    }
    Some(whole as u64 + u64::from(fraction > 0.5))
}

/// `units` ten-thousandths as a decimal with four places, or with its
/// trailing zeros (and then its point) dropped.
fn push_units(out: &mut String, negative: bool, units: u64, trim: bool) {
    let (mut whole, mut fraction) = (units / 10_000, units % 10_000);
    let mut places = 4;
    while trim && places > 0 && fraction % 10 == 0 {
        fraction /= 10;
        places -= 1;
    }
    // Written from the right: the places, the point, the whole part, the
    // sign (at most 4 + 1 + 20 + 1 bytes).
    let mut text = [0u8; 26];
    let mut at = text.len();
    let mut put = |byte: u8| {
        at -= 1;
        text[at] = byte;
    };
    for _ in 0..places {
        put(b'0' + (fraction % 10) as u8);
        fraction /= 10;
    }
    if places > 0 {
        put(b'.');
    }
    loop {
        put(b'0' + (whole % 10) as u8);
        whole /= 10;
        if whole == 0 {
            break;
        }
    }
    if negative {
        put(b'-');
    }
    // ASCII digits, a point and a sign: always text.
    out.push_str(std::str::from_utf8(&text[at..]).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_core::rng::SeededRng;

    fn both(v: f64) {
        let mut fixed = String::new();
        push_fixed4(&mut fixed, v);
        assert_eq!(fixed, format!("{v:.4}"), "{{:.4}} of {v:e} ({:#x})", v.to_bits());
        let mut shortest = String::new();
        push_shortest(&mut shortest, v);
        assert_eq!(shortest, format!("{v}"), "{{}} of {v:e} ({:#x})", v.to_bits());
    }

    #[test]
    fn numbers_are_written_as_format_writes_them() {
        let edges = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.05,
            0.5,
            0.00005,
            0.00015,
            0.00025,
            0.03125,
            -0.03125,
            1.00005,
            0.99995,
            0.99999,
            -0.00001,
            1e-5,
            1e-300,
            f64::MIN_POSITIVE,
            0.1 + 0.2,
            123.456,
            1e10 + 0.5,
            99_999_999_999.999_9,
            1e11,
            2.5e14,
            1e15,
            1e20,
            f64::MAX,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ];
        for v in edges {
            both(v);
        }
        // Every count of ten-thousandths up to 2 and from 10^6, halves of
        // them, and their neighbours an ulp away.
        for k in (0..20_000u64).chain(10_000_000_000..10_000_020_000) {
            for x in [k as f64 / 1e4, (k as f64 + 0.5) / 1e4] {
                for v in [
                    x,
                    -x,
                    f64::from_bits(x.to_bits() + 1),
                    f64::from_bits(x.to_bits().saturating_sub(1)),
                ] {
                    both(v);
                }
            }
        }
        // Random bits (every magnitude) and random values of every size a
        // reason shows.
        let rng = SeededRng::new(5);
        for _ in 0..100_000 {
            both(f64::from_bits(rng.next_u64()));
            let scale = 10f64.powi((rng.next_u64() % 24) as i32 - 8);
            both((rng.next_f64() - 0.5) * scale);
        }
    }
}
