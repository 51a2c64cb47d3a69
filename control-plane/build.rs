//! Embeds the dashboard's built bundle (`web/dist`, committed; `npm run
//! build` in `web/` remakes it) in the binary, compressed, in every profile:
//! `control-plane serve` serves it from memory at `/`, with nothing to
//! install beside the binary.

fn main() {
    memory_serve::load_directory_with_embed("../web/dist", true);
}
