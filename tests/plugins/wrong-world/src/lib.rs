//! Invalid: a component for some other world (exports `hello`, not `run`).

wit_bindgen::generate!({
    inline: "
        package test:wrong;
        world other {
            export hello: func() -> string;
        }
    ",
});

struct Other;

impl Guest for Other {
    fn hello() -> String {
        "hello".into()
    }
}

export!(Other);
