"""The routing expert: how it is built, prompted, served and evaluated."""
