#include "OutpostShims.h"
