"The speed wing: fast versions of lesson classes (C++ and Triton kernels, fused optimizer steps), each tested equal to the lesson code it replaces."
