"""Policy over skills for the Gnomish Mines task (reach the Mines), written by hand in the
format of the code a language model writes: descend until in the Mines, then explore there.
Runs with the skills of ../skills.py; data the method reads, not a module to import.
"""

# The Mines' staircase is on dungeon level 2, 3 or 4: deeper in the main dungeon, the
# branch was passed.
DEEPEST_MINES_BRANCH = 4


def policy(features):
    if features["in_mines"]:
        return "discoverer"
    if features["depth"] > DEEPEST_MINES_BRANCH:
        return "ascender"
    return "descender"
