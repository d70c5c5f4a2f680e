//! Invalid: imports an interface (`test:missing/db`) this host does not
//! provide.

wit_bindgen::generate!({
    inline: "
        package test:missing;
        interface db {
            query: func(sql: string) -> string;
        }
        world task {
            import db;
            export run: func(input: list<u8>) -> result<list<u8>, string>;
        }
    ",
});

struct WithDb;

impl Guest for WithDb {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(test::missing::db::query(&String::from_utf8_lossy(&input)).into_bytes())
    }
}

export!(WithDb);
