"""The boot image recipe: pinned Debian packages in, a boot ISO and an engine bundle out.

`pymachine image build` runs it; see docs/boot-image.md.
"""
