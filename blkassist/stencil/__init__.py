"""BLK-Stencil data: transparent pen-and-ink assets (Platonic solids, clouds, shapes), alpha-safe
augmentation, premultiplied compositing and curriculum training sets."""
