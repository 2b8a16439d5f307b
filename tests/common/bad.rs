//! `bad!(counter, try_call, Error::Variant { .. }, "argument")`: asserts that a `try_` call
//! fails with that variant, that the message names the argument (and, for shape errors, the
//! given shape), and counts the case. Shared by the `errors_*` test files.

macro_rules! bad {
    ($n:ident, $res:expr, $pat:pat, $name:expr) => {{
        let err = match $res {
            Ok(_) => panic!("expected an error naming `{}`, got Ok", $name),
            Err(e) => e,
        };
        assert!(
            matches!(err, $pat),
            "wrong variant for `{}`: {err:?}",
            $name
        );
        let msg = err.to_string();
        assert!(
            msg.contains($name),
            "message does not name `{}`: {msg}",
            $name
        );
        if let Error::Shape { got, .. } = &err {
            assert!(
                msg.contains(&format!("{got:?}")),
                "shape not in message: {msg}"
            );
        }
        $n += 1;
    }};
}
