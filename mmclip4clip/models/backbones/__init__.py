from .clip import CLIPBackbone, build_clip

__all__ = ['CLIPBackbone', 'build_clip']
